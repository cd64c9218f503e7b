"""The `musicgen` command. Thin: it parses, calls the layers, prints. Every failure a user can
fix ends as one line on stderr and a non-zero exit status, never a traceback."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from musicgen_server import __version__
from musicgen_server.config import Settings, get_settings
from musicgen_server.errors import MusicgenError

app = typer.Typer(
    name="musicgen",
    help="Generate music from text with Meta's MusicGen, from the command line or as a service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List, download and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "value"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _settings(**overrides) -> Settings:
    try:
        return get_settings(**overrides)
    except ValidationError as error:
        raise fail(f"bad setting: {validation_message(error)}", EXIT_BAD_INPUT) from error


# --- generate -------------------------------------------------------------------------------


def _slug(prompt: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return words[:48].rstrip("-") or "music"


def output_paths(output: Path | None, prompt: str, fmt: str, seeds: list[int]) -> list[Path]:
    """One file per take: `-o name.ext` for one take, `name-1.ext`... for several; without
    `-o`, a name made from the prompt and the seed in the current folder."""
    if output is None:
        return [Path(f"{_slug(prompt)}-{seed}.{fmt}") for seed in seeds]
    if output.is_dir():
        return [output / f"{_slug(prompt)}-{seed}.{fmt}" for seed in seeds]
    if output.suffix == "":
        output = output.with_suffix(f".{fmt}")
    if len(seeds) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{index + 1}{output.suffix}") for index in range(len(seeds))]


def _choose_format(fmt: str | None, output: Path | None) -> str:
    from musicgen_server.generation.audio import get_format

    suffix = output.suffix.lstrip(".").lower() if output is not None and output.suffix else None
    if fmt is None:
        return get_format(suffix or "wav").name
    chosen = get_format(fmt).name
    if suffix and get_format(suffix).name != chosen if suffix in ("wav", "flac", "ogg", "mp3") else False:
        raise MusicgenError(f"output name ends in .{suffix} but --format is {chosen}: make them agree")
    return chosen


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the music should sound like.")],
    duration: Annotated[float, typer.Option("--duration", "-d", help="Seconds of audio.")] = 8.0,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Alias, repo id or folder.")] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed, same audio. Take i uses seed+i.")] = None,
    num: Annotated[int, typer.Option("--num", "-n", min=1, max=64, help="Number of takes.")] = 1,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="wav, flac, ogg or mp3.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File (or folder) to write.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="0 = off, 1 = greedy.")] = 250,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus mass, 0 = off.")] = 0.0,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance, 1 = off.")] = 3.0,
    normalize: Annotated[str, typer.Option(help="none, peak or loudness.")] = "none",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N, mps.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, float16, bfloat16.")] = None,
    engine: Annotated[str | None, typer.Option(help="batched or reference.")] = None,
) -> None:
    """Generate music from a text prompt and write it to audio files."""
    from musicgen_server.generation import audio
    from musicgen_server.generation.params import GenerationParams, GenerationRequest
    from musicgen_server.models.registry import resolve

    settings = _settings(model=model, device=device, dtype=dtype, engine=engine)
    try:
        params = GenerationParams(
            duration=duration,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance,
            seed=seed,
        ).with_seed()
        fmt_name = _choose_format(fmt, output)
        resolve(settings.model)
        if normalize not in audio.NORMALIZE_MODES:
            raise MusicgenError(f"--normalize '{normalize}' is not one of {', '.join(audio.NORMALIZE_MODES)}")
        if not prompt.strip():
            raise MusicgenError("the prompt is empty: describe the music you want")
    except ValidationError as error:
        raise fail(validation_message(error), EXIT_BAD_INPUT) from error
    except MusicgenError as error:
        raise fail(error.message, EXIT_BAD_INPUT) from error

    seeds = [params.seed + take for take in range(num)]
    paths = output_paths(output, prompt, fmt_name, seeds)
    from musicgen_server.generation.generator import MusicGenerator

    generator = MusicGenerator(settings)
    try:
        with _progress() as progress:
            task = progress.add_task(f"loading {settings.model}", total=None)
            engine_ = generator.engine(settings.model)
            loaded = engine_.model
            if not loaded.trained:
                err.print(f"[yellow]note:[/] '{loaded.name}' is an untrained test model: its output is noise")
            handles = [
                engine_.submit(GenerationRequest(prompt, params.model_copy(update={"seed": value})))
                for value in seeds
            ]
            total = sum(handle.steps_total for handle in handles)
            progress.update(task, description=f"generating {num} x {duration:g}s", total=total, completed=0)
            while not all(handle.done() for handle in handles):
                progress.update(task, completed=sum(handle.steps_done for handle in handles))
                time.sleep(0.05)
            progress.update(task, completed=total)
            results = [handle.result() for handle in handles]
    except MusicgenError as error:
        raise fail(error.message, EXIT_BAD_INPUT if error.status_code < 500 else EXIT_FAILED) from error
    finally:
        generator.close()

    for path, result in zip(paths, results, strict=True):
        clip = audio.normalize(result.samples, result.sample_rate, normalize, target_lufs=settings.loudness_target)
        audio.write(path, clip, result.sample_rate, fmt_name, tags=_tags(result))
        out.print(f"{path}  ({result.duration:.2f}s, {result.sample_rate} Hz, {result.channels} ch, seed {result.seed})")


def _tags(result) -> dict[str, str]:
    return {
        "title": result.prompt,
        "artist": f"MusicGen ({result.model})",
        "comment": f"prompt: {result.prompt}; model: {result.model}; seed: {result.seed}",
        "software": f"musicgen-server {__version__}",
    }


# --- models ---------------------------------------------------------------------------------


def _human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


@models_app.command("list")
def models_list() -> None:
    """Every known model: downloaded or not, size on disk, licence."""
    from musicgen_server.models import hub
    from musicgen_server.models.catalog import catalog

    table = Table(caption=f"Hugging Face cache: {hub.cache_dir()}")
    table.add_column("name", no_wrap=True)
    table.add_column("source", no_wrap=True)
    for column in ("params", "ch", "here", "size", "licence", "notes"):
        table.add_column(column)
    for entry in catalog(_settings()):
        table.add_row(
            entry.name,
            entry.source,
            entry.parameters,
            str(entry.channels or "?"),
            "yes" if entry.downloaded else "no",
            _human_bytes(entry.size_bytes),
            entry.license,
            entry.notes,
        )
    # Piped output gets the table at its natural width instead of squeezed into 80 columns.
    console = out if out.is_terminal else Console(width=200)
    console.print(table)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="Alias or Hugging Face repo id.")]) -> None:
    """Download a model into the Hugging Face cache (build it, for tiny)."""
    from musicgen_server.models import hub, registry
    from musicgen_server.models.loading import locate

    settings = _settings()
    try:
        spec = registry.resolve(name)
        if spec.kind == "hub" and hub.cached_snapshot(spec.source) is None:
            folder = hub.download(spec.name, spec.source, timeout=settings.hub_timeout)
        else:
            folder = locate(spec, settings)
    except MusicgenError as error:
        raise fail(error.message) from error
    out.print(f"{spec.name}: ready in {folder} ({_human_bytes(hub.folder_size(folder))})")


# --- serve ----------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    model: Annotated[str | None, typer.Option(help="Default model.")] = None,
) -> None:
    """Run the HTTP service."""
    settings = _settings(host=host, port=port, model=model)
    try:
        from musicgen_server.api.server import run
    except ImportError as error:
        raise fail(f"the HTTP service is not available: {error}") from error
    run(settings)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
