"""The engine: turns science functions into Parsl apps, runs the generation state machine,
and is the only writer of the provenance database."""
