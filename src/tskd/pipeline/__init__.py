"""The pipeline: the stages composed over one run folder.

``registry`` is the table of stages (name, function, CLI command, title, folders) and
``run_pipeline``; ``stages`` holds one function per stage (teacher, synthesize, distill,
student, evaluate); ``context`` what every stage shares (the labelled set read once per run,
skip, seed, timing); ``fingerprints`` what each artefact depends on; ``markers`` a stage's
``stage.json`` and the hashes it records; ``run_folder`` is the run folder's layout and its
preparation, ``manifest`` what a run folder owns and ``lock`` its one-writer lock, shared by
the CLI, the widgets and a resumed run.
"""
