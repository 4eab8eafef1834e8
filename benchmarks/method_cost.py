"""Step cost of every method relative to no-kd: training steps/s on one dataset, same models and batches.

    python benchmarks/method_cost.py [--dataset synth-av] [--steps 40] [--repeats 3] [--device cpu]
                                     [--output leaderboard/METHOD_COST.md]

Each method trains its student as in a real run for --steps steps: where the run would serve the
frozen teacher's outputs from its per-run cache (cmkd_bench/training/teacher_outputs.py) the step gathers
them, otherwise it runs the teacher's forward; the "teacher" column says which. Steps run
after a warm-up, repeated --repeats times in an interleaved order so that a slow moment of the
machine does not land on one method only; the median steps/s is compared with no-kd's. The
one-time preparation of a method (MGDFR's ranking, the teacher-output cache) is timed apart, since
it is not a per-step cost (mst's is its stages 1 and 2: co-training and the MaskNets, one epoch
each). --no-cache measures every method with the live teacher forward. A method that needs a
multimodal teacher (mst) gets the fusion of every modality and the cross-modal teachers, untrained.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from cmkd_bench.catalog import METHODS, load_all
from cmkd_bench.method import RunContext
from cmkd_bench.models.fusion import DEFAULT_FUSION, SEPARATOR, FusionModel, model_input
from cmkd_bench.recipes import autocast, build_optimizer
from cmkd_bench.registry import DATASETS
from cmkd_bench.training.engine import resolve_device
from cmkd_bench.training.runner import build_model
from cmkd_bench.training.teacher_outputs import TeacherOutputs, plan


def steps_per_second(method_name: str, data, device: torch.device, steps: int, warmup: int = 5,
                     cache: bool = True) -> tuple[float, float, str]:
    spec = data.spec
    student = build_model(spec.modalities[spec.student_modality].backbone, data, spec.student_modality, 1, device)
    implementation = METHODS.get(method_name).implementation
    if getattr(implementation, "multimodal_teacher_only", None):  # mst: a fusion teacher and the cross-modal ones
        encoders = {m: build_model(spec.modalities[m].backbone, data, m, 0, device) for m in spec.modalities}
        teacher = FusionModel(encoders, DEFAULT_FUSION, spec.num_classes, spec.student_modality).to(device).eval()
        t_mod = SEPARATOR.join(spec.modalities)
        method_spec = replace(spec, teacher_modality=t_mod)
    else:
        teacher = build_model(spec.modalities[spec.teacher_modality].backbone, data, spec.teacher_modality, 0,
                              device).eval()
        t_mod, method_spec = spec.teacher_modality, spec
    method = METHODS.build(method_name, student.info, teacher.info, method_spec).to(device)  # the default direction
    cross = {m: build_model(spec.modalities[m].backbone, data, m, 0, device).eval().requires_grad_(False)
             for m in spec.modalities if m != spec.student_modality} if "cross" in method.extra_teachers else {}
    method.context = RunContext(student=student, recipe=spec.recipe, seed=0, teacher_modality=t_mod,
                                student_modality=spec.student_modality, cross_teachers=cross)
    began = time.perf_counter()
    method.prepare(teacher, data, str(device), None)
    teacher_plan = plan(method, teacher, data, spec.teacher_modality, device)
    cached = None
    if cache and teacher_plan.cached:
        cached = TeacherOutputs.compute(teacher, data, "train", spec.teacher_modality, method.teacher_reads(), device)
    prepare_seconds = time.perf_counter() - began
    params = list(student.parameters()) + list(method.parameters())
    if method.trains_teacher:
        params += list(teacher.parameters())
        teacher.train()
    optimizer = build_optimizer(params, spec.recipe)
    batches = list(data.batches("train", spec.recipe.batch_size, shuffle=True, seed=0, device=device))
    timed = 0.0
    for step in range(warmup + steps):
        batch = batches[step % len(batches)]
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            timed = time.perf_counter()
        with autocast(device):
            with torch.set_grad_enabled(method.trains_teacher):
                if cached is not None:
                    t_out = cached.gather(batch["index"])
                else:
                    t_out = teacher(model_input(batch, t_mod)) if method.uses_teacher else None
            losses = method(student(batch[spec.student_modality]), t_out, batch)
        optimizer.zero_grad(set_to_none=True)
        torch.stack([v.float() for v in losses.values()]).sum().backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    how = "cached" if cached is not None else ("live" if method.uses_teacher else "-")
    if cross:  # the method runs its own (masked) teachers: the multimodal one and the cross-modal ones
        how = f"{t_mod} and {', '.join(cross)}, run by the method"
    return steps / (time.perf_counter() - timed), prepare_seconds, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synth-av")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="", help="comma-separated; default: every method for the dataset's task")
    parser.add_argument("--output", help="also write the table as Markdown to this file")
    parser.add_argument("--no-cache", action="store_true", help="run the teacher's forward every step for every method")
    args = parser.parse_args()
    load_all()
    device = resolve_device(args.device)
    data = DATASETS.build(DATASETS.canonical(args.dataset), None)
    names = args.methods.split(",") if args.methods else METHODS.names(task=data.spec.task)
    names = ["no-kd"] + [n for n in names if n != "no-kd"]
    rates: dict[str, list[float]] = {n: [] for n in names}
    prepare: dict[str, float] = {}
    teacher: dict[str, str] = {}
    for _ in range(args.repeats):
        for name in names:
            rate, prep, teacher[name] = steps_per_second(name, data, device, args.steps, cache=not args.no_cache)
            rates[name].append(rate)
            prepare[name] = prep
    base = statistics.median(rates["no-kd"])
    lines = [f"Step cost on {data.spec.name} ({device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"batch {data.spec.recipe.batch_size}, median of {args.repeats} x {args.steps} steps), "
             "measured by `python benchmarks/method_cost.py`.", "",
             "| method | teacher | steps/s | relative to no-kd | one-time preparation (s) |", "|---|---|---:|---:|---:|"]
    for name in names:
        median = statistics.median(rates[name])
        lines.append(f"| {name} | {teacher[name]} | {median:.1f} | {median / base:.2f} | {prepare[name]:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
