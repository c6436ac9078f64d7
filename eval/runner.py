"""Plan the (run, dataset, task) evaluations of a comparison and run the ones without a result yet.

Each evaluation is one clip_benchmark call (or, for the mapped IN-9 score, ``mapped.evaluate_mapped``, and
for the linear probe, clip_benchmark's protocol on any device, ``probe_run``);
its result JSON is the record of it being done, which is what makes re-running cheap. A result is reused
only if it records the same inputs (the set's content and the task's settings, ``inputs``) as the
evaluation planned now; one that differs is recomputed, with a note saying why. Everything derived
from a run's checkpoint lives under paths named after the run (``result_dir``, ``classifier_path``,
``feature_root``), so ``forget`` can drop it all when the checkpoint changes.
"""
import json
import logging
import os
import shutil
from dataclasses import dataclass

from . import checkpoints, inputs, mapped, models, results
from .benchmark import clip_benchmark_argv, read_result, run_clip_benchmark
from .probe_run import ProbeRun
from .specs import IN1K_TO_IN9, LINEAR_PROBE, ZEROSHOT_CLASSIFICATION, DatasetSpec, Run

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """One (run, dataset, task), the JSON it writes and the inputs that JSON must record to be reused."""

    run: Run
    spec: DatasetSpec
    task: str
    output: str
    inputs: dict


def result_dir(out, run_name):
    """The run's clip_benchmark result JSONs."""
    return os.path.join(out, "results", run_name)


def classifier_path(out, run_name):
    """The run's 1000-class ImageNet zero-shot classifier, shared by the IN-1k and mapped IN-9 evaluations."""
    return os.path.join(out, "classifiers", f"{run_name}__imagenet1k.pt")


def feature_root(out, run_name):
    """The run's linear-probe features and fitted probes (``probe_cache``, keyed by checkpoint content)."""
    return os.path.join(out, "features", run_name)


def forget(out, run_name):
    """Delete everything computed from the run's checkpoint; whether there was anything."""
    found = False
    for path in (result_dir(out, run_name), feature_root(out, run_name), classifier_path(out, run_name)):
        if os.path.isdir(path):
            shutil.rmtree(path)
            found = True
        elif os.path.exists(path):
            os.remove(path)
            found = True
    return found


def plan(runs, datasets, tasks, out, settings, notes):
    """Every evaluation to have a result for, ImageNet-1k zero-shot first (it saves the shared classifier).

    ``settings``: ``inputs.TaskSettings``; each set's content key is computed here, once per split.
    """
    if LINEAR_PROBE in tasks:
        notes.extend(dict.fromkeys(n for d in datasets for n in d.notes if n not in notes))
    identities, evaluations = inputs.SetIdentities(), []
    for run in runs:
        for spec in datasets:
            for task in (t for t in tasks if t in spec.tasks):
                output = os.path.join(result_dir(out, run.name), f"{results.slug(spec.name)}__{task}.json")
                evaluations.append(Evaluation(run, spec, task, output,
                                              inputs.expected(identities, settings, spec, task)))
    evaluations.sort(key=lambda e: (runs.index(e.run), not _builds_in1k_classifier(e)))
    return evaluations


def _builds_in1k_classifier(evaluation):
    spec = evaluation.spec
    return (evaluation.task == ZEROSHOT_CLASSIFICATION and spec.cb_dataset == "imagenet1k-unverified"
            and spec.classnames is None)


def _why_redo(evaluation):
    """None if the existing result can be reused, else why not: '' when there is no readable result (none
    yet, or one truncated by an interrupted run), else the difference of its recorded inputs."""
    if not os.path.isfile(evaluation.output):
        return ""
    try:
        result = read_result(evaluation.output)
    except (ValueError, KeyError):
        return ""
    return inputs.difference(result.get(inputs.KEY), evaluation.inputs, evaluation.spec.name)


def pending(evaluations, notes):
    """The evaluations without a result to reuse. A result for other inputs is removed (clip_benchmark
    skips an existing output file), and why it is recomputed goes to the log and, once per set and
    reason, to ``notes``."""
    todo, redone = [], {}
    for e in evaluations:
        reason = _why_redo(e)
        if reason is None:
            continue
        if os.path.isfile(e.output):
            os.remove(e.output)
        todo.append(e)
        if reason:
            log.info("%s · %s · %s: recomputing, as %s", e.run.name, e.spec.name, e.task, reason)
            redone.setdefault((e.spec.name, reason), []).append(e)
    for (name, reason), redo in redone.items():
        note = f"{name}: {len(redo)} result(s) recomputed, as {reason}"
        log.warning(note)
        notes.append(note)
    return todo


def _classnames_file(out, spec):
    path = os.path.join(out, "classnames", f"{results.slug(spec.name)}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({spec.cb_dataset: list(spec.classnames)}, f)
    return path


def _probe_run(model, cb_model, pretrained, run, out, device, amp, batch_size, num_workers, probe_settings):
    """The run's linear probes, keyed by the checkpoint content recorded in runs.json (``checkpoints``)."""
    content = checkpoints.load(out)[run.name]["identity"]["content"]
    return ProbeRun(model=model, cb_model=cb_model, pretrained=pretrained, content=content,
                    cache_folder=feature_root(out, run.name), device=device, amp=amp, batch_size=batch_size,
                    num_workers=num_workers, settings=probe_settings)


def execute(pending, model, out, batch_size, num_workers, amp, recall_k, device, probe_settings=None):
    """Run the pending evaluations; all IN-9 mapped ones of a run share one model load, and so do its probes."""
    from xsample_openclip.progress import progress_bar

    progress = progress_bar(total=len(pending), desc="evaluations", unit="eval")
    for run in dict.fromkeys(e.run for e in pending):
        cb_model, pretrained = models.model_for_run(model, run, out)
        classifier = classifier_path(out, run.name)
        os.makedirs(os.path.dirname(classifier), exist_ok=True)
        probes = [e for e in pending if e.run == run and e.task == LINEAR_PROBE]
        if probes:
            prober = _probe_run(model, cb_model, pretrained, run, out, device, amp, batch_size, num_workers,
                                probe_settings)
            for e in probes:
                progress.set_postfix_str(f"{run.name} · {e.spec.name} · {e.task}")
                os.makedirs(os.path.dirname(e.output), exist_ok=True)
                prober.evaluate(e.spec, e.output)
                inputs.record(e.output, e.inputs)
                progress.update()
        for e in (e for e in pending if e.run == run and e.task not in (IN1K_TO_IN9, LINEAR_PROBE)):
            progress.set_postfix_str(f"{run.name} · {e.spec.name} · {e.task}")
            os.makedirs(os.path.dirname(e.output), exist_ok=True)
            shared = _builds_in1k_classifier(e)
            argv = clip_benchmark_argv(
                model=cb_model, pretrained=pretrained, dataset=e.spec.cb_dataset, root=e.spec.root, task=e.task,
                output=e.output, batch_size=batch_size, num_workers=num_workers, amp=amp,
                classnames_file=_classnames_file(out, e.spec) if e.spec.classnames else None,
                save_clf=classifier if shared and not os.path.isfile(classifier) else None,
                load_clf=classifier if shared and os.path.isfile(classifier) else None, recall_k=recall_k)
            run_clip_benchmark(argv)
            inputs.record(e.output, e.inputs)
            progress.update()
        todo = [e for e in pending if e.run == run and e.task == IN1K_TO_IN9]
        if todo:
            progress.set_postfix_str(f"{run.name} · IN-9 (1000-way, mapped)")
            for e in todo:
                os.makedirs(os.path.dirname(e.output), exist_ok=True)
            mapped.evaluate_mapped(model_name=cb_model, pretrained=pretrained, specs=[e.spec for e in todo],
                                   outputs={e.spec.name: e.output for e in todo}, classifier_path=classifier,
                                   batch_size=batch_size, num_workers=num_workers, amp=amp)
            for e in todo:
                inputs.record(e.output, e.inputs)
            progress.update(len(todo))
    progress.close()
