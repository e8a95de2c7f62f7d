"""Playbooks: reviewed YAML runbooks of netwatch actions, waits, checks and device steps.

- `values` (pure): parameter types and the rules a value must pass to reach the control API or
  a device session;
- `template` (pure): `{{ name }}` placeholders, substituted as values, never as text;
- `schema` (pure): the playbook file's strict pydantic models;
- `inventory` (pure but for reading its files): devices and where their credentials come
  from;
- `loader`: playbook and inventory files with every problem as `FILE:LINE: path: message`, and
  where the shipped playbooks are;
- `conditions` (pure): a wait's or check's condition judged on a daemon's status;
- `plan` (pure): a playbook and its parameters resolved into concrete steps (what dry-run
  prints and the runner carries out);
- `ports`: the Protocols the runner talks through (control API, devices, diagnosis, operator);
- `runner`: carries out a plan: progress, confirmation, rollback, Ctrl-C, the trail;
- `control_port`: the control-API port over `netwatch.control.client`.

The netmiko adapter is `netwatch.adapters.netmiko_device`; the CLI is
`netwatch.commands.playbook_cmd`.
"""
