"""`rbee apply`: a playbook (desired state in YAML), the plan that makes a fleet match it, and
carrying that plan out through the queen."""
