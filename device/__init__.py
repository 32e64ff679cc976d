"""kyc-edge: on-device KYC verification. Only the verdict leaves the box."""
__version__ = "0.1.0"
