"""Hardware, as pure logic: what a machine has (inventory), what a model needs per GPU (requirements), the
profiles people write (profiles) and which fits and why the others do not (check). The probes that read a
live machine or a capture are gptossctl.adapters'; install.preflight puts the two together.
"""
