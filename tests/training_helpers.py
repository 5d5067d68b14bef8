"""Shared by the training tests: stop `train_denoiser` at a given step, as a kill would."""


class Interrupted(Exception):
    pass


def interrupt_at(step):
    """A `train_denoiser` callback that raises :class:`Interrupted` once ``step`` steps are done."""
    def callback(done, loss):
        if done >= step:
            raise Interrupted

    return callback
