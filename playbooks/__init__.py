"""Order and state: the playbook catalogue, the runner and the store."""
