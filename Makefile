# The two commands of the README's quick start:
#   make demo   set up .venv, preprocess sample photos into a manifest plus a preview sheet
#   make test   set up .venv, run the whole test suite
# and for the edit loop:
#   make test-fast   every test not marked slow (nothing that trains or generates)
# Both create .venv and install into it on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are installed first and as a matching pair; override for your platform/CUDA.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
INPUT ?= ../shared/data/hagrid_mini
OUT ?= out/demo
DEMO_ARGS ?= --label-from-dir --shard-size 10
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/handfirst-prep run --input $(INPUT) --out $(OUT)/manifest $(DEMO_ARGS) --preview $(OUT)/preview.png
	$(BIN)/handfirst-manifests validate $(OUT)/manifest
	@echo "manifest: $(OUT)/manifest   preview: $(OUT)/preview.png"

# pytest exits 5 when it collected no test: say so instead of failing obscurely.
test: venv
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-fast: venv
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: venv
	$(BIN)/ruff check prep manifests generation tests bench
	$(BIN)/ruff format --check prep manifests generation tests bench

clean:
	rm -rf $(VENV) out .pytest_cache
