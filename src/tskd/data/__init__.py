"""Data: reading images and label maps, the label policy, model inputs, sample tasks, output rules.

``io`` reads and writes images and labelled sets, ``label_policy`` says what label values mean,
``dataset`` turns stored images into model inputs (normalisation, augmentation, splits),
``check`` checks a labelled set before training, ``outputs`` says where tskd may write, and
``phantoms`` draws the procedural sample tasks. Nothing here builds or trains a model.
"""
