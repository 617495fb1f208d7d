"""Writes the tutorial notebooks from the cell sources below (outputs stripped).

    python tutorials/build_notebooks.py

Edit the cells here, not the .ipynb files: the notebooks are generated, and
tests/test_tutorials.py checks that they match this file and that each runs top to bottom.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = "sae-lens-jumprelu/sae-lens-jumprelu"
HERE = Path(__file__).parent

INSTALL = f"""\
# Installs this package where it is missing (Colab); a no-op where it is installed already.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("sae_lens_jumprelu") is None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q",
         "sae-lens-jumprelu @ git+https://github.com/{REPO}"],
        check=True,
    )"""


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/tutorials/{name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def notebook(name: str, title: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [new_markdown_cell(f"# {title}\n\n{badge(name)}"), new_code_cell(INSTALL)]
    for kind, source in cells:
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # stable ids: regenerating gives identical files
    return nb


TUTORIALS: dict[str, tuple[str, list[tuple[str, str]]]] = {}

TUTORIALS["01_train_a_jumprelu_sae.ipynb"] = (
    "01 · Train a JumpReLU SAE",
    [
        (
            "md",
            """\
This notebook trains a JumpReLU sparse autoencoder on a language model's residual stream with the
straight-through L0 estimators of *Jumping Ahead* (Rajamanoharan et al. 2024), evaluates it on
held-out text, and loads the result with plain SAELens.

Everything runs offline on the embedded default model (Gemma 3 270M, unpacked once into
`~/.cache/sae_lens_jumprelu`) and the embedded text. On a GPU, set `DEVICE = "cuda"` and give it
millions of tokens: the budget here is a few minutes of CPU, so the SAE is a demonstration, not
one to study.""",
        ),
        (
            "code",
            """\
DEVICE = "cpu"
TOKENS = 60_000  # training tokens; real SAEs want 10M-1B

from sae_lens_jumprelu.data.models import load_model
from sae_lens_jumprelu.data.sites import resolve_sites

model = load_model(None, device=DEVICE)  # a TransformerLens HookedTransformer
site = resolve_sites(model, ["resid:6"])[0]
print(model.cfg.model_name, "layers:", model.cfg.n_layers, "| site:", site.hook_name,
      "d_in:", site.d_in)""",
        ),
        (
            "md",
            """\
## Train with one call

`run_train` is what `sae-jumprelu train` runs: one forward pass per batch of contexts feeds every
SAE; here one SAE with a target L0 of 16 (no lambda sweep: a controller adjusts lambda until the
mean L0 is 16). It saves a SAELens-format SAE, evaluates it on held-out documents (L0, FVU,
delta LM loss) and plots the training curve.""",
        ),
        (
            "code",
            """\
from pathlib import Path

from sae_lens_jumprelu.commands.train import TrainJob, run_train

result = run_train(TrainJob(
    sites=["resid:6"], tokens=TOKENS, d_sae=1024, target_l0=[16], eval_tokens=1024,
    device=DEVICE, out=Path("tutorial-01-run"),
))
evaluation = result.evaluations[site.hook_name]
print(f"held-out L0 {evaluation.l0:.1f}  FVU {evaluation.fvu:.3f}  "
      f"delta LM loss {evaluation.delta_lm_loss:.3f} nats  dead {evaluation.frac_dead:.0%}")""",
        ),
        (
            "code",
            """\
from IPython.display import Image, Markdown, display

display(Markdown((result.out / "metrics.md").read_text()))
display(Image(filename=str(result.curves[site.hook_name])))""",
        ),
        (
            "md",
            """\
## Load it with plain SAELens

The saved SAE is SAELens's own `jumprelu` architecture (the input normalisation used in training
is folded into the weights), so SAELens loads it without this package and runs it on raw
activations.""",
        ),
        (
            "code",
            """\
import torch
from sae_lens import SAE

sae = SAE.load_from_disk(result.sae_dirs[site.hook_name], device=DEVICE)
print(type(sae).__name__, sae.cfg.metadata.hook_name, "d_sae:", sae.cfg.d_sae)

prompt = "The function returns a list of strings, one for each line in the file."
tokens = model.to_tokens(prompt)
_, cache = model.run_with_cache(tokens, names_filter=site.hook_name)
features = sae.encode(cache[site.hook_name])[0]  # [position, d_sae]
for position in range(1, tokens.shape[1]):
    values, ids = features[position].topk(3)
    shown = ", ".join(f"{int(i)} ({float(v):.1f})" for v, i in zip(values, ids) if v > 0)
    l0 = int((features[position] > 0).sum())
    print(f"{model.to_string(tokens[0, position])!r:>12}  L0 {l0:3d}  top: {shown}")""",
        ),
        (
            "md",
            """\
## The same SAE inside SAELens's own runner

`import sae_lens_jumprelu` registers the `jumprelu_ste` training architecture with SAELens, so
its `LanguageModelSAERunnerConfig` and `LanguageModelSAETrainingRunner` train it like any built-in
SAE. The recipe gives the SAE config and the optimiser settings; here a very short run on a tiny
tokenized dataset made from the embedded text.""",
        ),
        (
            "code",
            """\
from dataclasses import replace

from datasets import Dataset
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

from sae_lens_jumprelu.data.corpus import load_token_corpus
from sae_lens_jumprelu.recipes import SHORT_BUDGET

corpus = load_token_corpus(model.tokenizer, None, train_tokens=20_000, context_size=128)
dataset = Dataset.from_dict({"tokens": corpus.train.tolist()})
recipe = replace(SHORT_BUDGET, batch_size=1024)
cfg = LanguageModelSAERunnerConfig(
    sae=recipe.sae_config(d_in=site.d_in, d_sae=1024, target_l0=16),
    # lr, Adam betas, batch size, and the warm-up and decay steps for a run of this length
    **recipe.runner_kwargs(training_tokens=16 * 1024),
    model_name=model.cfg.model_name, hook_name=site.hook_name, dataset_path="embedded",
    is_dataset_tokenized=True, context_size=128,
    store_batch_size_prompts=8, n_batches_in_buffer=8, device=DEVICE,
    logger=LoggingConfig(log_to_wandb=False), output_path="tutorial-01-runner",
    checkpoint_path=None,
)
runner_sae = LanguageModelSAETrainingRunner(
    cfg, override_model=model, override_dataset=dataset
).run()
saved = SAE.load_from_disk("tutorial-01-runner")
print(type(runner_sae).__name__, "trained; saved as SAELens", saved.cfg.architecture())""",
        ),
        (
            "md",
            """\
Next: `02_gemma_scope_and_gated.ipynb` (weight formats), `03_circuit_analysis.ipynb` (features in
HookedSAETransformer), `04_reproduce_the_comparison.ipynb` (JumpReLU vs TopK vs Gated).""",
        ),
    ],
)

TUTORIALS["02_gemma_scope_and_gated.ipynb"] = (
    "02 · Gemma Scope files, Gated SAEs, and exact conversion",
    [
        (
            "md",
            """\
A Gated SAE whose gate and magnitude encoders are tied (W_mag = W_gate * exp(r_mag)) computes
exactly a JumpReLU SAE, and every JumpReLU SAE is such a Gated SAE. This notebook moves one SAE
through the formats people publish SAEs in (Gemma Scope's `params.npz`, SAELens's `gated` and
`jumprelu` directories) and checks at each step, with SAELens's own classes, that the function is
unchanged.

Gemma Scope's files live on the Hugging Face hub; with network access you would start from one:

```python
from huggingface_hub import hf_hub_download
path = hf_hub_download("google/gemma-scope-2b-pt-res",
                       "layer_20/width_16k/average_l0_71/params.npz")
```

Offline, this notebook writes a Gemma Scope file from an SAE it trains on the embedded model
first, then imports that file the way you would import a downloaded one.""",
        ),
        (
            "code",
            """\
DEVICE = "cpu"
from pathlib import Path

from sae_lens_jumprelu.data.models import load_model
from sae_lens_jumprelu.commands.train import TrainJob, run_train

model = load_model(None, device=DEVICE)
result = run_train(TrainJob(sites=["resid:6"], tokens=30_000, d_sae=512, target_l0=[16],
                            eval_tokens=512, device=DEVICE, out=Path("tutorial-02-run")))
(hook_name, sae_dir), = result.sae_dirs.items()
print(hook_name, sae_dir)""",
        ),
        (
            "md",
            """\
## Export to Gemma Scope's format, then import it back

`convert` detects the source format from its files, converts through one exact in-memory form,
checks the result on Gaussian and heavy-tailed inputs with SAELens's `JumpReLUSAE` before
writing, and writes atomically (a failed conversion leaves nothing behind).""",
        ),
        (
            "code",
            """\
from sae_lens_jumprelu.convert import convert, detect_format

Path("tutorial-02").mkdir(exist_ok=True)
def show(result):
    check = result.verification
    print(f"{result.source_format} -> {result.target}: largest relative difference "
          f"{check.max_rel_forward:.1e} (forward), {check.max_rel_encode:.1e} (latents), "
          f"{check.unexplained_mismatches} latents switching on/off")


exported = convert(sae_dir, Path("tutorial-02/params.npz"), to="gemma-scope", overwrite=True)
show(exported)
print("detected:", detect_format(Path("tutorial-02/params.npz")))

# A Gemma Scope file has no hook name in it: give it (a release path such as
# gemma-scope-2b-pt-res/layer_20/... lets the converter infer it).
imported = convert(Path("tutorial-02/params.npz"), Path("tutorial-02/jumprelu"), to="jumprelu",
                   hook_name=hook_name, overwrite=True)
show(imported)""",
        ),
        (
            "md",
            """\
## JumpReLU → Gated → JumpReLU

The Gated form has r_mag = 0, b_mag = b_enc and b_gate = b_enc - theta. Going back recovers
theta = b_mag - exp(r_mag) * b_gate.""",
        ),
        (
            "code",
            """\
to_gated = convert(Path("tutorial-02/jumprelu"), Path("tutorial-02/gated"), to="gated",
                   overwrite=True)
back = convert(Path("tutorial-02/gated"), Path("tutorial-02/jumprelu-again"), to="jumprelu",
               overwrite=True)
show(to_gated)
show(back)""",
        ),
        (
            "md",
            """\
## Check on real activations, in SAELens

Load the original, the Gated and the round-tripped SAE with plain SAELens, run them on the
model's activations, and splice each into the model: the reconstructions and the delta LM loss
must agree.""",
        ),
        (
            "code",
            """\
import torch
from sae_lens import SAE

from sae_lens_jumprelu.data.activations import special_token_ids
from sae_lens_jumprelu.data.corpus import load_token_corpus
from sae_lens_jumprelu.evals import evaluate_saes, markdown_table

saes = {
    "trained (jumprelu)": SAE.load_from_disk(sae_dir, device=DEVICE),
    "via Gemma Scope npz": SAE.load_from_disk("tutorial-02/jumprelu", device=DEVICE),
    "as Gated": SAE.load_from_disk("tutorial-02/gated", device=DEVICE),
    "Gated back to jumprelu": SAE.load_from_disk("tutorial-02/jumprelu-again", device=DEVICE),
}
for name, sae in saes.items():
    print(f"{name:24s} {type(sae).__name__}")

tokens = model.to_tokens("Return the number of items in a container.")
_, cache = model.run_with_cache(tokens, names_filter=hook_name)
x = cache[hook_name][0, 1:]  # without BOS, as the SAE was trained
with torch.no_grad():
    reference = saes["trained (jumprelu)"](x)
    for name, sae in saes.items():
        diff = (sae(x) - reference).abs().max() / reference.abs().max()
        print(f"{name:24s} largest relative difference {diff.item():.1e}")""",
        ),
        (
            "code",
            """\
from IPython.display import Markdown, display

corpus = load_token_corpus(model.tokenizer, None, train_tokens=1, held_out_tokens=1024,
                           context_size=128)
results = evaluate_saes(model, saes, corpus.held_out, special_token_ids(model))
display(Markdown(markdown_table(results)))""",
        ),
    ],
)

TUTORIALS["03_circuit_analysis.ipynb"] = (
    "03 · Circuit analysis with SAE features in HookedSAETransformer",
    [
        (
            "md",
            """\
SAEs trained here are SAELens SAEs, so SAELens's `HookedSAETransformer` splices them into the
model. `sae_lens_jumprelu.analysis` adds the few steps a circuit study repeats: attribute a metric
to features (activation x gradient, with the reconstruction error's share), look at what a feature
writes to the logits, ablate or steer it, and find its top-activating examples over a dataset.

A short training run on the embedded model comes first so that the notebook runs anywhere; load
your own SAE (or a Gemma Scope file) with `load_sae(path)` instead.""",
        ),
        (
            "code",
            """\
DEVICE = "cpu"
from pathlib import Path

from sae_lens_jumprelu.analysis import (
    FeatureEdit, attribute, collect_feature_stats, generate_with_edits, hooked_sae_transformer,
    load_sae, logit_difference, logit_effects, run_with_edits,
)
from sae_lens_jumprelu.data.models import load_model
from sae_lens_jumprelu.commands.train import TrainJob, run_train

base = load_model(None, device=DEVICE)
result = run_train(TrainJob(sites=["resid:6"], tokens=60_000, d_sae=1024, target_l0=[16],
                            eval_tokens=512, device=DEVICE, out=Path("tutorial-03-run")))
(hook_name, sae_dir), = result.sae_dirs.items()
model = hooked_sae_transformer(base)  # the same weights, as a HookedSAETransformer
sae = load_sae(sae_dir)
print(hook_name, "d_sae:", sae.cfg.d_sae)""",
        ),
        (
            "md",
            """\
## Which features push the model towards an answer?

The metric is a logit difference at the last position: how much more the model predicts
` True` than ` False` after a prompt from Python's documentation style.""",
        ),
        (
            "code",
            """\
prompt = "If the object is an instance of the class, isinstance() returns"
good, bad = model.to_single_token(" True"), model.to_single_token(" False")
metric = logit_difference(good, bad)
clean = metric(model(prompt)).item()
attribution = attribute(model, sae, prompt, metric)
site = attribution.sites[hook_name]
print(f"logit difference {clean:.3f} (with the SAE spliced in: {attribution.metric:.3f})")
print(f"shares: features {site.features.sum().item():+.3f}, error {site.error.sum().item():+.3f}, "
      f"decoder bias {site.bias.sum().item():+.3f}")
top = attribution.top_features(5)
for hook, feature, share in top:
    print(f"feature {feature:5d}  activation x gradient {share:+.3f}")""",
        ),
        (
            "md",
            """\
## What do those features write to the logits?

A feature's decoder row, read through the final norm's scale and the unembedding, promotes some
tokens and suppresses others directly (before any later layer acts on it).""",
        ),
        (
            "code",
            """\
features = [feature for _, feature, _ in top]
effects = logit_effects(model, sae, features, k=5)
for i, feature in enumerate(features):
    up = [model.to_string(t) for t in effects.promoted_ids[i]]
    down = [model.to_string(t) for t in effects.suppressed_ids[i]]
    print(f"feature {feature:5d}  promotes {up}  suppresses {down}")""",
        ),
        (
            "md",
            """\
## Ablate the top feature: does the logit difference move as attribution predicted?

Attribution is a linear estimate; ablating the feature at every position (error term kept, so
only this feature's contribution is removed) measures the real effect.""",
        ),
        (
            "code",
            """\
feature = features[0]
ablated = metric(run_with_edits(model, FeatureEdit(sae, ablate=[feature]), prompt)).item()
print(f"predicted change {-site.features[..., feature].sum().item():+.3f}, "
      f"measured change {ablated - clean:+.3f}")""",
        ),
        (
            "md",
            """\
## Steer generation with a feature""",
        ),
        (
            "code",
            """\
for amount in (0.0, 4.0):
    edit = FeatureEdit(sae, steer={feature: amount})
    tokens = generate_with_edits(model, edit, "The return value", max_new_tokens=12)
    print(f"steer {amount:3.1f}: {model.to_string(tokens[0, 1:])!r}")""",
        ),
        (
            "md",
            """\
## Top-activating examples, streamed

`collect_feature_stats` runs a dataset through the model once and keeps, per feature, the firing
frequency, a histogram and the top-k contexts, merged batch by batch (bounded memory). The
dashboard command (`sae-jumprelu dashboard SAE --out DIR`) renders the same statistics as a
static site.""",
        ),
        (
            "code",
            """\
from sae_lens_jumprelu.data.activations import special_token_ids
from sae_lens_jumprelu.data.corpus import load_token_corpus

corpus = load_token_corpus(model.tokenizer, None, train_tokens=8192, context_size=64)
batches = corpus.train.split(16)
stats = collect_feature_stats(model, sae, batches, features=features, k=3,
                              exclude_token_ids=special_token_ids(model))
for i, feature in enumerate(features[:3]):
    print(f"feature {feature}: fires on {stats.frequency[i].item():.2%} of tokens")
    for j in range(3):
        window = stats.window_tokens[i, j]
        text = model.to_string(window[window >= 0])  # -1: beyond the context's edge
        print(f"   {stats.top_values[i, j].item():6.2f}  {text!r}")""",
        ),
    ],
)

TUTORIALS["04_reproduce_the_comparison.ipynb"] = (
    "04 · Reproduce the paper's comparison: JumpReLU vs TopK vs BatchTopK vs Gated",
    [
        (
            "md",
            """\
The paper's claim: at a given sparsity (L0), JumpReLU SAEs reconstruct more faithfully than Gated
SAEs and at least as well as TopK, measured as delta LM loss (cross-entropy with the SAE spliced
in minus the clean one) against L0.

`run_sweep` (the `sae-jumprelu sweep` command) trains every architecture over a grid of sparsity
settings on the same activation stream (one LM forward pass feeds all SAEs), reloads each saved
SAE with plain SAELens, evaluates all on the same held-out text, and writes `results.csv`, a
Markdown table and the paper-style plots.

The budget here is tiny so that the notebook runs in minutes on a CPU: read the plots as a
demonstration of the pipeline. The README's sweep (100k tokens) and its reading are the
reference; for conclusions, use millions of tokens (`tokens=` / `--tokens`) on a GPU.""",
        ),
        (
            "code",
            """\
DEVICE = "cpu"
from pathlib import Path

from sae_lens_jumprelu.commands.sweep import SweepJob, run_sweep

job = SweepJob(
    tokens=16_384, d_sae=512, eval_tokens=512, device=DEVICE, out=Path("tutorial-04-sweep"),
    grids={  # two settings per architecture instead of the default four or five
        "jumprelu_ste_target": (16.0, 64.0),
        "jumprelu_ste_lambda": (1e-3, 1e-2),
        "jumprelu": (1.0, 10.0),
        "topk": (16.0, 64.0),
        "batchtopk": (16.0, 64.0),
        "gated": (3.0, 30.0),
    },
)
result = run_sweep(job)
print(sorted(p.name for p in result.out.iterdir()))""",
        ),
        (
            "code",
            """\
from IPython.display import Image, Markdown, display

display(Markdown(result.files["md"].read_text()))
display(Image(filename=str(result.files["delta_lm_loss"])))
display(Image(filename=str(result.files["fvu"])))""",
        ),
        (
            "md",
            """\
## Read the table as data

Each row is one SAE; `results.csv` is plain CSV for your own plots.""",
        ),
        (
            "code",
            """\
import csv

with result.files["csv"].open() as f:
    rows = list(csv.DictReader(f))
for row in sorted(rows, key=lambda r: float(r["l0"])):
    print(f"{row['architecture']:22s} {row['setting']:24s} L0 {float(row['l0']):7.1f}  "
          f"FVU {float(row['fvu']):.3f}  delta LM loss {float(row['delta_lm_loss']):.3f}")""",
        ),
        (
            "md",
            """\
## The synthetic ground truth

`benchmarks/synthetic_sweep.py` runs the same architectures on SAELens's synthetic data, where
the true features are known, and reports feature recovery (MCC) and FVU against L0; its results
are in the README.""",
        ),
    ],
)


def main() -> None:
    for name, (title, cells) in TUTORIALS.items():
        nbformat.write(notebook(name, title, cells), HERE / name)
        print("wrote", HERE / name)  # noqa: T201


if __name__ == "__main__":
    main()
