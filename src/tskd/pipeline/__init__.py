"""The pipeline: the stages composed over one run folder.

``stages`` holds one function per stage (teacher, synthesize, distill, student, evaluate) and
``run_pipeline``; ``run_folder`` is the run folder's layout, fingerprints and stage markers,
``manifest`` what a run folder owns and ``lock`` its one-writer lock, shared by the CLI, the
widgets and a resumed run.
"""
