"""Fleet updates: signed manifests, A/B model+config slots, self-test, health probe, rollback.

Device side: `agent.UpdateAgent`, `slots.active_bundle`, `slots.boot_guard`.
Manager side: `commands` (kyc-edge fleet ...), `rollout` (publish, staged rollout, status table).
See docs/fleet.md. Imports only device.config/verdict/errors/models, stdlib and network libraries.
"""
