"""Fleet updates: signed manifests, A/B model+config slots, self-test, health probe, rollback.

Device side: `agent.UpdateAgent`, `slots.active_bundle`, `slots.boot_guard`; software updates of the
daemon itself (wheel bundles into A/B venv slots, `python -m device.fleet.software guard` as the
unit's ExecStartPre): `software.SoftwareUpdater`, plugged into the agent.
Manager side: `commands` (kyc-edge fleet ...), `rollout` (publish, staged rollout, status table).
See docs/fleet.md. Imports only device.config/verdict/errors/models, stdlib and network libraries.
"""
