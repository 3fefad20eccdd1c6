from avsr.cli import entry

entry()
