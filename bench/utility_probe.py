"""Is the drug reviews' rating learnable above the majority answer by MiniLM's features at all?

A diagnostic beside ``bench/utility.py``: the frozen all-MiniLM-L6-v2 encoder embeds the 600
train and 379 test reviews of the ``drug-reviews`` scenario (cut to ``--max-length`` tokens);
a linear classifier (softmax regression, Adam, full batch, seeded) is fit on *all* train
embeddings, centrally, without DP, and scored on the test file. Two features: the mean of the
last hidden states over the tokens (what the sentence-transformers model was trained for) and
BERT's pooler output on [CLS] (what ``BertForSequenceClassification``, and so fedlora's
classifier, reads). Where even this probe does not beat always answering the majority rating,
a few epochs of LoRA on 600 reviews are not expected to either.

Run from the repository root after ``fedlora assets fetch``::

    python bench/utility_probe.py --max-length 128
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from transformers import AutoModel, AutoTokenizer

from fedlora.assets_cache import resolve_asset
from fedlora.metrics import accuracy, macro_f1
from fedlora.simulations import drug_reviews

LABELS = ("negative", "neutral", "positive")


def _features(
    model: torch.nn.Module, tokenizer: AutoTokenizer, name: str, max_length: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Mean-pooled and pooler features of one file's reviews, and their labels."""
    records = drug_reviews.to_records(
        drug_reviews.read_reviews(drug_reviews.data_folder() / name), "classification"
    )
    means, pooled = [], []
    with torch.no_grad():
        for start in range(0, len(records), 32):
            batch = tokenizer(
                [record["text"] for record in records[start : start + 32]],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out = model(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            means.append((out.last_hidden_state * mask).sum(1) / mask.sum(1))
            pooled.append(out.pooler_output)
    labels = [LABELS.index(record["label"]) for record in records]
    return torch.cat(means), torch.cat(pooled), labels


def _probe(train: torch.Tensor, labels: list[int], steps: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    linear = torch.nn.Linear(train.shape[1], len(LABELS))
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2)
    target = torch.tensor(labels)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(train), target).backward()
        optimizer.step()
    return linear


def main() -> None:
    """Print the probe's test accuracy and macro-F1 for both features, and the majority's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=128, help="tokens per review")
    parser.add_argument("--steps", type=int, default=300, help="full-batch Adam steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = resolve_asset("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    train_mean, train_pooled, train_labels = _features(
        model, tokenizer, drug_reviews.TRAIN_FILE, args.max_length
    )
    test_mean, test_pooled, test_labels = _features(
        model, tokenizer, drug_reviews.TEST_FILE, args.max_length
    )
    majority = Counter(train_labels).most_common(1)[0][0]
    always = [majority] * len(test_labels)
    print("| features | train accuracy | test accuracy | test macro-F1 |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| always {LABELS[majority]} | — | {accuracy(always, test_labels):.3f} "
        f"| {macro_f1(always, test_labels, labels=range(len(LABELS))):.3f} |"
    )
    for name, train, test in (
        ("mean of last hidden states", train_mean, test_mean),
        ("pooler output ([CLS])", train_pooled, test_pooled),
    ):
        linear = _probe(train, train_labels, args.steps, args.seed)
        with torch.no_grad():
            fitted = linear(train).argmax(1).tolist()
            predicted = linear(test).argmax(1).tolist()
        print(
            f"| {name} | {accuracy(fitted, train_labels):.3f} "
            f"| {accuracy(predicted, test_labels):.3f} "
            f"| {macro_f1(predicted, test_labels, labels=range(len(LABELS))):.3f} |"
        )


if __name__ == "__main__":
    main()
