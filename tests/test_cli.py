"""The command line maps arguments only: recipes by name from any folder, overrides anywhere."""

from conftest import run_cli


def test_a_shipped_recipe_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("train", "quickstart", f"out={tmp_path / 'run'}")
    # the recipe was read (its backbones are set by the quickstart): the first missing input is named
    assert code == 2 and "model.llm: not set" in err and "recipe not found" not in err
    code, _, err = run_cli("train", "no_such_recipe")
    assert code == 2 and "recipe not found: no_such_recipe" in err and "quickstart_smop" in err


def test_overrides_may_follow_options(tmp_path):
    code, _, err = run_cli("train", "quickstart", "--quiet", "optim.max_steps=0", f"out={tmp_path / 'run'}")
    assert code == 2 and "optim.max_steps must be a positive integer, got 0" in err
    code, _, err = run_cli("train", "quickstart", "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err


def test_quickstart_seed_is_the_training_seed_and_corpus_seed_the_corpus():
    from avsr.cli import build_parser, synth_config

    args = build_parser().parse_args(["quickstart", "--seed", "3", "--corpus-seed", "5", "--out", "q"])
    assert args.seed == 3 and synth_config(args, out="q/data").seed == 5
    args = build_parser().parse_args(["quickstart"])
    assert args.seed == 0 and synth_config(args, out="q/data").seed == 0
    assert (synth_config(args).utterances["train"], synth_config(args).speakers["train"]) == (1200, 20)
    args = build_parser().parse_args(["quickstart", "--profile", "reading"])  # the profile's corpus
    assert (synth_config(args).utterances["train"], synth_config(args).speakers["train"]) == (8000, 54)
    args = build_parser().parse_args(["quickstart", "--profile", "reading", "--train", "50"])  # unless given
    assert (synth_config(args).utterances["train"], synth_config(args).speakers["train"]) == (50, 54)
    args = build_parser().parse_args(["synth", "--seed", "7"])  # `avsr synth` keeps --seed for its corpus
    assert synth_config(args).seed == 7
    code, _, err = run_cli("quickstart", "--seed", "-1")
    assert code == 2 and "--seed" in err
