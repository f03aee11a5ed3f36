from vlmexp.tracking.base import Tracker


class NullTracker(Tracker):
    """``logger=none``: results go to the run folder and the terminal only."""
