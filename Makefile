# The two commands a fresh machine needs (both set themselves up first):
#   make quickstart   the main job
#   make test         the test suite
VENV ?= .venv

.PHONY: setup lock quickstart test bench-synth contact-sheet

setup:
	@bash scripts/setup.sh $(VENV)

lock:
	@bash scripts/lock.sh

quickstart: setup
	$(VENV)/bin/avsr quickstart $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

bench-synth: setup
	$(VENV)/bin/python benchmarks/synth_throughput.py $(ARGS)

contact-sheet: setup
	rm -f docs/contact_sheet.png  # a file of the checkout, not one avsr recorded: avsr would not replace it
	$(VENV)/bin/avsr contact-sheet --out docs/contact_sheet.png
