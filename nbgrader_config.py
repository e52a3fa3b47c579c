"""nbgrader's configuration for this repository (`make instructor-lab`, and `nbgrader ...` run here).

nbgrader expects a course directory laid out by step: ``source/<assignment>/<notebook>.ipynb``,
``release/...``, ``submitted/<student>/<assignment>/...``, ``autograded/...``, ``feedback/...`` and a
``gradebook.db``. This repository keeps its source flat (``solutions/NN_topic.ipynb``, one notebook
per assignment named after it), so the course directory is ``build/nbgrader/``, made by
`make instructor-lab`: its ``source/NN_topic/NN_topic.ipynb`` are links to ``solutions/``, so what
Formgrader and the Create Assignment sidebar edit is the real source. It lies inside the repository,
which is JupyterLab's root in `make instructor-lab`, as Formgrader requires.

* ``release/`` there is nbgrader's own release, for its exchange; the committed student notebooks
  in ``notebooks/`` are built by `make release` (the same nbgrader step, then normalised).
* The exchange (``nbgrader release_assignment``, ``fetch``, ``submit``, ``collect``) is
  ``build/nbgrader/exchange`` instead of ``/usr/local/share/nbgrader/exchange``, which a learner's or
  instructor's laptop does not have (the "unwritable exchange" errors).
* Collected work lands in ``build/nbgrader/submitted/``: grade it with the course's grader,
  `make grade-class SUBMITTED=build/nbgrader/submitted ASSIGNMENT=01_attention`, and give
  ``--gradebook build/nbgrader/gradebook.db`` so that Formgrader shows the scores.

``build/`` is scratch (`make clean` removes it): for a real course, copy this file into your own
course directory and set ``CourseDirectory.root`` there.
"""
import os

HERE = os.path.dirname(os.path.realpath(__file__))  # also through the link in build/nbgrader/student
COURSE = os.path.join(HERE, "build", "nbgrader")

c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

c.CourseDirectory.root = COURSE
c.CourseDirectory.course_id = "llm-course"
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(COURSE, "gradebook.db")
c.Exchange.root = os.path.join(COURSE, "exchange")
c.Exchange.path_includes_course = True
# A learner's assignments (Assignment List, `nbgrader fetch_assignment`) go here, not into the repo.
c.Exchange.assignment_dir = os.path.join(COURSE, "student")
