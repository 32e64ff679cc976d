"""device/schemacheck.py against jsonschema (the reference, still installed for the tools and tests) on the
daemon's real schemas: valid instances and thousands of mutations of them (fields dropped, unknown fields
added, values replaced by other types and out-of-range values), same errors (path and keyword) and the
same first error under the daemon's ordering. And the daemon no longer imports jsonschema."""
from __future__ import annotations

import copy
import random
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from device import schemacheck as SC
from device import verdict as V
from device.fleet import manifest as mf
from device.link import events as E

REPO = Path(__file__).resolve().parents[1]

ODD = [None, True, False, 0, 1, -1, 1.0, 2.5, -0.5, 1e9, 17, 3601, "", "x", "a b", "é", "0" * 64, "1" * 12,
       "2026-11-29T04:52:33.123Z", "pass", "challenge", [], [1], ["a", "a"], {}, {"x": 1}, "x" * 200]


def _samples() -> list[tuple[str, dict, object]]:
    from tests.test_verdict import make
    art = [{"name": "m.tflite", "sha256": "0" * 64, "size": 10, **mf.inline_fields(b"x" * 10)}]
    man = mf.make_manifest(bundle_version=2, artifacts=art, config_patch={"match": {"threshold": 0.4}},
                           vectors=None, kind=None)
    v1 = copy.deepcopy(make())
    v1["schema_version"] = "1"
    v1.pop("consent", None)
    v1.pop("binding", None)
    return [
        ("verdict", V.SCHEMA, make()),
        ("verdict.v1", V._SCHEMAS["1"], v1),
        ("session_event", E.SESSION_EVENT_SCHEMA,
         {"event": "challenge", "at": "2026-11-29T04:52:33.123Z", "session_id": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
          "challenge": "blink", "step": 1, "of": 3, "deadline_s": 5.0, "prompt": "blink"}),
        ("update_status", E.UPDATE_STATUS_SCHEMA, {"state": "downloading", "at": "2026-11-29T04:52:33Z",
                                                   "bundle": 3, "ok": True, "note": None}),
        ("manifest", mf.SCHEMA, man),
    ]


def _paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, path + (i,))


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _mutations(inst, rng: random.Random, n: int):
    paths = list(_paths(inst))
    for _ in range(n):
        m = copy.deepcopy(inst)
        for _ in range(rng.choice((1, 1, 2, 3))):
            p = rng.choice(paths)
            try:
                parent = _get(m, p[:-1]) if p else None
            except (KeyError, IndexError, TypeError):
                continue
            op = rng.random()
            if not p:
                m = rng.choice(ODD)
                break
            if op < 0.2 and isinstance(parent, dict):
                parent.pop(p[-1], None)                        # a field dropped
            elif op < 0.35 and isinstance(parent, dict):
                parent[rng.choice(("extra", "name", "image", "x y", "9" * 9))] = rng.choice(ODD)   # unknown field
            elif op < 0.45 and isinstance(parent, list):
                parent.append(rng.choice(ODD) if rng.random() < 0.5 else copy.deepcopy(parent[0]) if parent else 1)
            else:
                try:
                    parent[p[-1]] = rng.choice(ODD)
                except (IndexError, KeyError, TypeError):
                    pass
        yield m


def _ref_errors(schema, inst):
    return [(list(e.absolute_path), e.validator) for e in jsonschema.Draft202012Validator(schema).iter_errors(inst)]


def _ours(schema, inst):
    return [(e.absolute_path, e.validator) for e in SC.Validator(schema).iter_errors(inst)]


def _first(errs):
    """The error the daemon reports (sorted by path as verdict.py / events.py do; a path mixing a key and
    an index at one depth cannot be sorted there either)."""
    try:
        return sorted(errs, key=lambda e: e[0])[0] if errs else None
    except TypeError:
        return TypeError


@pytest.mark.parametrize("name,schema,inst", _samples(), ids=[s[0] for s in _samples()])
def test_same_errors_as_jsonschema(name, schema, inst):
    assert _ours(schema, inst) == _ref_errors(schema, inst) == [], "a valid instance is valid"
    rng = random.Random(name)
    differing, invalid = [], 0
    for m in _mutations(inst, rng, 1500):
        ref, ours = _ref_errors(schema, m), _ours(schema, m)
        invalid += bool(ref)
        key = lambda e: (str(e[0]), e[1])  # noqa: E731 - the same errors, in any order
        if sorted(ref, key=key) != sorted(ours, key=key) or _first(ref) != _first(ours):
            differing.append((m, ref, ours))
    assert not differing, differing[:2]
    assert invalid > 500, "the mutations break the schema often"


def test_unknown_fields_rejected_with_path_and_rule():
    from tests.test_verdict import make
    v = make()
    v["face_image"] = "x"
    with pytest.raises(V.VerdictError, match=r"additionalProperties"):
        V.validate(v)
    with pytest.raises(V.VerdictError, match=r"\$\.scores.*additionalProperties"):
        V.validate({**make(), "scores": {**make()["scores"], "embedding": [0.1]}})
    with pytest.raises(V.VerdictError, match=r"session event \$: violates schema rule 'additionalProperties'"):
        E.session_event({"event": "idle", "name": "x"})


def test_unsupported_keywords_and_remote_refs_are_refused():
    with pytest.raises(ValueError, match="patternProperties"):
        SC.Validator({"type": "object", "patternProperties": {"^a": {}}})
    with pytest.raises(ValueError, match="format"):
        SC.Validator({"properties": {"a": {"type": "string", "format": "email"}}})
    with pytest.raises(ValueError, match="local"):
        SC.Validator({"$ref": "https://example.org/s.json"})


def test_the_daemon_does_not_import_jsonschema():
    code = ("import sys, device.daemon, device.vision.suite, device.link.mqtt, device.fleet.agent, device.link.events;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jsonschema', 'referencing', 'attrs', 'rpds')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
