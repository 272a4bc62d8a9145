"""PiG, Perceptual-in-Generation: diagnoses -> masks and prompt edits -> refinement -> re-assessment,
until the score stops improving."""
