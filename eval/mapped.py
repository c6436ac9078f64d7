"""The paper-style IN-9 score: a 1000-way ImageNet zero-shot classifier whose top-1 prediction is mapped
to the 9 IN-9 classes (Xiao et al. 2020). clip_benchmark cannot map predictions, so this module does only
that step and uses clip_benchmark for everything else (model loading, dataset, classifier, logits).
"""
import json
import os

from . import in9
from .benchmark import device_and_amp, package_progress_bars
from .specs import IN1K_TO_IN9


def mapped_accuracy(logits, targets):
    """Top-1 over all 1000 classes, mapped to IN-9; a prediction outside IN-9 counts as wrong."""
    import torch

    table = torch.tensor(in9.in1k_to_in9())
    predicted = table[logits.argmax(dim=1)]
    return (predicted == targets).float().mean().item()


def load_or_build_classifier(model, tokenizer, dataset, device, amp, path):
    """The 1000-class zero-shot weights (OpenAI names and templates), cached at ``path``.

    The same file is clip_benchmark's --save_clf/--load_clfs for the ImageNet-1k zero-shot of the same run,
    so the 80,000 prompts are encoded once per run.
    """
    import torch
    from clip_benchmark.metrics.zeroshot_classification import zero_shot_classifier

    if path and os.path.isfile(path):
        return torch.load(path, map_location="cpu").to(device)
    classifier = zero_shot_classifier(model, tokenizer, dataset.classes, dataset.templates, device, amp=amp)
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(classifier.cpu(), path)
    return classifier


def evaluate_mapped(*, model_name, pretrained, specs, outputs, classifier_path, batch_size, num_workers, amp=None):
    """Write one clip_benchmark-style result JSON per IN-9 variant in ``specs`` (to ``outputs[spec.name]``)."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics.zeroshot_classification import run_classification
    from clip_benchmark.models import load_clip

    device, amp = device_and_amp(amp)
    model, transform, tokenizer = load_clip("open_clip", model_name, pretrained, None, device)
    model.eval()
    with package_progress_bars():
        classifier = None
        for spec in specs:
            # 'imagenet1k-unverified' = ImageFolder(<variant>/val) with the 1000 OpenAI class names and templates;
            # its targets are the IN-9 folder order, which is the IN-9 label order.
            dataset = build_dataset("imagenet1k-unverified", root=spec.root, transform=transform, split="test",
                                    task="zeroshot_classification")
            if classifier is None:
                classifier = load_or_build_classifier(model, tokenizer, dataset, device, amp, classifier_path)
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
            logits, targets = run_classification(model, classifier, loader, device, amp=amp)
            result = {"dataset": spec.name, "model": model_name, "pretrained": pretrained, "task": IN1K_TO_IN9,
                      "metrics": {"acc1": mapped_accuracy(logits, targets)}, "language": "en"}
            with open(outputs[spec.name], "w") as f:
                json.dump(result, f)
