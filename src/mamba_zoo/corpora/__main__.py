"""Command line: build an embedded corpus and write it out as 16 kHz WAV files plus a manifest.

    python -m mamba_zoo.corpora keywords --out DIR [--num-per-class 200] [--include-digits]
    python -m mamba_zoo.corpora speakers --out DIR [--num-speakers 10] [--num-sentences 60]
    python -m mamba_zoo.corpora transcribed --out DIR [--kind digits|sentences] [--num-train 2000]
    python -m mamba_zoo.corpora text --out DIR [--num-sentences 20000]
    python -m mamba_zoo.corpora engines        # which synthesis engines speak here, and how to install the rest

Audio corpora take ``--engines espeak-ng festival`` (training engines) and ``--heldout-engines sam`` (an extra
``heldout_engine`` split).
"""

from __future__ import annotations

import argparse
import sys
import time

from .builders import load_keywords, load_speakers, load_text_corpus, load_transcribed
from .engines import ENGINES, engines_status
from .export import export_audio_dataset, export_text_dataset


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mamba_zoo.corpora",
        description="Build a synthetic speech corpus (espeak-ng, Festival, SAM; no download) and write WAV files + "
                    "manifest.csv.",
    )
    corpora = parser.add_subparsers(dest="corpus", required=True)
    corpora.add_parser("engines", help="which synthesis engines are installed here, and how to install the others")

    def engines(sub):
        sub.add_argument("--engines", nargs="+", default=["espeak-ng"], choices=ENGINES, help="training engines")
        sub.add_argument("--heldout-engines", nargs="+", default=[], choices=ENGINES,
                         help="engines of the extra heldout_engine split only")

    def common(sub, audio: bool = True):
        sub.add_argument("--out", required=True, help="output folder")
        sub.add_argument("--seed", type=int, default=0)
        if audio:
            sub.add_argument("--cache-dir", default=None, help="corpus cache (default $MAMBA_ZOO_CACHE or ~/.cache)")
            sub.add_argument("--sampling-rate", type=int, default=16000)
            sub.add_argument("--num-workers", type=int, default=None, help="rendering processes (0: this one)")
            sub.add_argument("--no-progress", action="store_true", help="hide progress bars")
        return sub

    keywords = common(corpora.add_parser("keywords", help="Speech Commands-style keyword spotting (folder per class)"))
    keywords.add_argument("--num-per-class", type=int, default=200, help="train clips per class")
    keywords.add_argument("--num-eval-per-class", type=int, default=None, help="validation/test clips per class")
    keywords.add_argument("--include-digits", action="store_true", help="add zero..nine as classes")
    engines(keywords)

    speakers = common(corpora.add_parser("speakers", help="speaker identification (folder per voice)"))
    speakers.add_argument("--num-speakers", type=int, default=10)
    speakers.add_argument("--num-sentences", type=int, default=60)

    transcribed = common(corpora.add_parser("transcribed", help="utterances with transcripts (ASR)"))
    transcribed.add_argument("--kind", choices=["digits", "sentences"], default="digits")
    transcribed.add_argument("--num-train", type=int, default=2000)
    transcribed.add_argument("--num-eval", type=int, default=200)
    engines(transcribed)

    text = common(corpora.add_parser("text", help="plain text sentences for language models"), audio=False)
    text.add_argument("--num-sentences", type=int, default=20000)
    text.add_argument("--kind", choices=["sentences", "arithmetic", "mixed"], default="mixed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    if args.corpus == "engines":
        for engine, reason in engines_status().items():
            print(f"{engine:<10} {'installed' if reason is None else 'missing: ' + reason}")
        return 0
    if args.corpus == "text":
        dataset = load_text_corpus(num_sentences=args.num_sentences, kind=args.kind, seed=args.seed)
        manifest = export_text_dataset(dataset, args.out)
    else:
        options = dict(
            seed=args.seed, cache_dir=args.cache_dir, sampling_rate=args.sampling_rate,
            num_workers=args.num_workers, progress=not args.no_progress,
        )
        if args.corpus == "keywords":
            dataset = load_keywords(
                num_per_class=args.num_per_class, num_eval_per_class=args.num_eval_per_class,
                include_digits=args.include_digits, engines=args.engines, heldout_engines=args.heldout_engines,
                **options,
            )
            group_by = "label"
        elif args.corpus == "speakers":
            dataset = load_speakers(num_speakers=args.num_speakers, num_sentences=args.num_sentences, **options)
            group_by = "label"
        else:
            dataset = load_transcribed(kind=args.kind, num_train=args.num_train, num_eval=args.num_eval,
                                       engines=args.engines, heldout_engines=args.heldout_engines, **options)
            group_by = None
        manifest = export_audio_dataset(dataset, args.out, group_by=group_by, progress=not args.no_progress)
    sizes = ", ".join(f"{split} {len(ds)}" for split, ds in dataset.items())
    print(f"{args.corpus}: {sizes}; wrote {manifest} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
