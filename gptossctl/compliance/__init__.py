"""Evidence that what runs is what was approved, configured as approved.

Flow: open the instance and its release record -> gather the evidence once and freeze it (evidence) -> run
the catalogue (rules) of checks by family: integrity, configuration, access, provenance (checks) -> one
report (result), written as JSON, JUnit, SARIF or a Prometheus textfile (outputs). `support` collects what a
support engineer needs into one archive with every secret removed.
"""
