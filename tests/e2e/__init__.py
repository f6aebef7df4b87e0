"""End-to-end tests: the real `kvmnetd serve` process in a throwaway namespace."""
