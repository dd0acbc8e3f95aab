"""Data: reading images and label maps, the label policy, model inputs, sample tasks, output rules.

``axes`` decides how an array's axes are read, ``pixel_budget`` how many pixels a reader
accepts, ``axes_notes`` says the readings that were guesses, ``decode`` decodes one file as
stored, ``files`` reads and writes one image or label file, ``folders`` lists a data folder's
files (nnU-Net cases too) and writes arrays as a labelled set, ``samples`` reads labelled sets
and unlabelled folders as 2D samples, ``label_map`` holds the ``LabelMap``, ``declared`` the
class maps a user declares, ``label_formats`` the label files refused, ``label_policy`` says what
label values mean, ``dataset`` turns stored images into model inputs (normalisation,
augmentation, splits), ``check`` checks a labelled set before training, ``outputs`` says where
tskd may write, and ``phantoms`` draws the procedural sample tasks. Nothing here builds or
trains a model.
"""
