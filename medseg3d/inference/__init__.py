"""Fast sliding-window inference, postprocessing and batch inference over a folder."""
