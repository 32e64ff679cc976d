-- kyc-edge operator database, version 2: nonces the operator sent in cmd/start (verdict binding
-- kind "nonce"). The ticketing side inserts sha256(nonce); the ingest binds the first verdict that
-- signs it (verdict_id) and quarantines any other one as `replayed`, and a nonce never issued as `unbound`.
CREATE TABLE issued_nonces (
    sha256     text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    site       text,
    device     text,
    verdict_id uuid
);
