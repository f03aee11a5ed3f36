"""Object detectors for auto-annotation (``detector=`` group): each a plugin named by ``_target_``,
returning per image a list of :class:`~vlmexp.detectors.base.Detection` in pixels."""
