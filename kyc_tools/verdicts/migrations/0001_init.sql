-- kyc-edge operator database, version 1: device-key registry, verdicts, quarantine, devices.
-- Applied by kyc_tools/verdicts/db.py migrate(); recorded in schema_migrations.

-- Enrolled verdict-signing keys. A key is added only by `kyc-edge fleet enrol` (never on first use).
CREATE TABLE device_keys (
    key_id      text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    site        text NOT NULL,
    device      text NOT NULL,
    public_key  text NOT NULL,                 -- base64 of the 32-byte Ed25519 public key
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    enrolled_by text NOT NULL DEFAULT current_user,
    revoked_at  timestamptz
);
CREATE INDEX device_keys_device ON device_keys (site, device);

-- One row per enrolled device; status columns come from the retained status topics.
CREATE TABLE devices (
    site               text NOT NULL,
    device             text NOT NULL,
    enrolled_at        timestamptz NOT NULL DEFAULT now(),
    state              text,                   -- online | offline | stopping (as the box reported)
    status             jsonb,                  -- last retained status (re-sanitised on ingest)
    status_at          timestamptz,            -- the status's own `at`, else when it was received
    status_received_at timestamptz,
    update_status      jsonb,                  -- last retained update/status
    update_at          timestamptz,
    PRIMARY KEY (site, device)
);

-- Verified verdicts, exactly once (verdict_id is the key; inserts use ON CONFLICT DO NOTHING).
CREATE TABLE verdicts (
    verdict_id  uuid PRIMARY KEY,
    site        text NOT NULL,
    device      text NOT NULL,
    result      text NOT NULL,
    reasons     text[] NOT NULL,
    started_at  timestamptz NOT NULL,
    decided_at  timestamptz NOT NULL,
    key_id      text NOT NULL REFERENCES device_keys (key_id),
    signed      jsonb NOT NULL,                -- the signed payload as received (verifiable again)
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    worker      text NOT NULL DEFAULT ''
);
CREATE INDEX verdicts_device_time ON verdicts (site, device, decided_at DESC);

-- Messages on a verdict topic that were not accepted, with the reason. The payload is kept only
-- when it is a schema-valid signed verdict (closed schema: nothing personal can be in it);
-- anything else is kept as its sha256 and size only.
CREATE TABLE quarantine (
    id             bigserial PRIMARY KEY,
    topic          text NOT NULL,
    reason         text NOT NULL,              -- invalid | unknown_key | revoked_key | wrong_device_key | forged | topic_mismatch | rejected
    detail         text NOT NULL,
    verdict_id     text,
    key_id         text,
    payload_sha256 text NOT NULL,
    payload_size   integer NOT NULL,
    payload        jsonb,
    first_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    seen           integer NOT NULL DEFAULT 1,
    UNIQUE (topic, payload_sha256)
);
