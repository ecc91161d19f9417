"""Domain stages: one module (or small package) per stage, each a :class:`pipeline.stage.Stage`."""
