"""The private PostgreSQL cluster the tests use (kyc_tools/verdicts/localpg.py)."""
from kyc_tools.verdicts.localpg import Postgres, available, pg_bin  # noqa: F401
