"""Confinement of agent code: a child process that holds nothing of naosd's.

Stdlib and ctypes only. See docs/security.md, "Agent confinement: mechanisms".

- ``policy`` (pure): the ``Confinement`` value, derived from an agent
  definition's fields and the ``HostPaths`` naosd knows;
- ``support``: ``probe()`` of what the kernel offers, with a summary for
  ``naosctl status``;
- ``landlock``, ``seccomp``, ``process``: the layers;
- ``bootstrap``: ``apply(spec)`` / ``confine_from_argv(argv)``, called by the
  child's host module before it imports agent code;
- ``launch``: ``launch(...)`` starts the child, ``layers_for`` decides its
  layers; ``process.protect_parent()`` is for the agent actor itself;
- ``run``: the smallest host module (run one file confined).

Nothing is re-exported here: the confined child imports this package before
it is confined and must not pay for the parent's side (subprocess, the probe).
"""
