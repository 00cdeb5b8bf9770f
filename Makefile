# The two commands a newcomer needs:
#   make        set everything up and build the course (notebooks executed, slides rendered,
#               the website built)
#   make test   run the whole test suite
# Everything runs inside .venv, which the first command creates.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CODE   := pdl tests tools benchmarks examples

.PHONY: all venv data notebooks notebooks-fast slides site student repository test lint benchmarks app clean

all: notebooks slides site

# The virtual environment, with pdl installed in editable mode plus the notebook and
# development extras. Re-installed when pyproject.toml changes.
venv: $(STAMP)
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[notebooks,dev]'
	touch $(STAMP)

# Fetch and verify every dataset (from the data root, the mirror PDL_DATA_MIRROR, or the web).
data: venv
	$(PY) -m pdl data

# Execute every notebook with its real (teaching) parameters into build/notebooks/full/.
notebooks: venv data
	$(PY) tools/run_notebooks.py --mode full

# The same with the fast parameters CI uses, into build/notebooks/fast/.
notebooks-fast: venv data
	$(PY) tools/run_notebooks.py --mode fast

# Marp CLI, pinned in slides/package-lock.json.
slides/node_modules/.installed: slides/package.json slides/package-lock.json
	cd slides && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Figures, then every deck to build/slides/NN_slug.html and .pdf.
slides: venv slides/node_modules/.installed
	$(PY) tools/build_slides.py

# MathJax, pinned in site/package-lock.json: the website renders math without a CDN.
site/node_modules/.installed: site/package.json site/package-lock.json
	cd site && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The course website, build/site/, from build/notebooks/full/ and build/slides/ (make notebooks
# slides first; make does). Preview: python -m http.server -d build/site
site: venv site/node_modules/.installed
	$(PY) tools/build_site.py

# The notebooks without their worked solutions, to hand out: build/student/.
student: venv
	$(PY) tools/student_release.py

# Move the course to another GitHub repository (badges, set-up cells, links):
#   make repository REPO=https://github.com/OWNER/NAME [BRANCH=main]
repository: venv
	$(PY) tools/repository.py $(REPO) $(if $(BRANCH),--branch $(BRANCH))

# Lint and format check first (seconds), then the suite.
test: lint data slides/node_modules/.installed site/node_modules/.installed
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check $(CODE)
	$(PY) -m ruff format --check $(CODE)

# Performance claims, each measured and printed as ratios in one run (gpu_check needs CUDA
# and says so without it; ddp_scaling starts its processes itself).
benchmarks: venv data
	$(PY) benchmarks/fit_overhead.py
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/cached_features.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/ddp_scaling.py
	$(PY) benchmarks/gpu_check.py

# Lecture 08's demo app on http://127.0.0.1:8000, serving the model notebook 08 exported;
# without one it first trains and exports a small one (a short Fashion-MNIST run) and says so.
app: venv data
	$(PY) -m pdl serve --model notebooks/runs/08_model_to_application/app --train-if-missing

clean:
	rm -rf build
