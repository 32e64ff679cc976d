"""The customer display: a page on the counter's screen driven by the session events.

    daemon ──(unix socket, JSON lines: closed session events)──> display server ──SSE──> kiosk Chromium
    daemon <──(same socket: {"answer", "notice_version"})────── display server <──POST /consent── page

Never imports the biometric side (tests/test_import_graph.py): it only ever sees session events,
validated against device.link.events.SESSION_EVENT_SCHEMA, which cannot carry an image, a name, an
ID number or free text.
"""
