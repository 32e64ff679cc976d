"""kyc-edge tools: fleet."""
