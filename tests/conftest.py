import pytest

from avsr.synth.corpus import SynthConfig, synthesize_corpus


def tiny_config(out, **overrides) -> SynthConfig:
    """A corpus small enough for tests (a few seconds), with every split and the noise."""
    settings = dict(out=str(out), seed=7, utterances={"train": 12, "val": 4, "test": 6},
                    speakers={"train": 4, "val": 2, "test": 3}, noise_speakers=3, noise_seconds=4.0, workers=2)
    settings.update(overrides)
    return SynthConfig(**settings)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """(config, summary) of a tiny corpus generated once per test session."""
    cfg = tiny_config(tmp_path_factory.mktemp("corpus"))
    summary = synthesize_corpus(cfg, progress=False)
    return cfg, summary
