"""Data helper (a script, not a test): the 40-class Tiny-ImageNet subset the README's results use, built from the
standard tiny-imagenet-200 download (http://cs231n.stanford.edu/tiny-imagenet-200.zip, the .zip or its folder),
in the same layout, so `--data=tinyimagenet` reads it unchanged: 40 classes x 500 train / 50 val images.

    python tests/make_tin40.py tiny-imagenet-200.zip data/tiny-imagenet-40.zip            # the README's 40 classes
    python tests/make_tin40.py tiny-imagenet-200.zip data/tin-60.zip --classes=60 --seed=1  # any other random subset
    python tests/make_tin40.py tiny-imagenet-200.zip data/tiny-imagenet-40.zip --splits     # and the class-disjoint
    # splits: data/tin40_pre20 + data/tin40_held20 (every 2nd class held out), data/tin40_pre30 + data/tin40_held10
"""
import argparse
import os
import random
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jepa  # noqa: E402
import split_classes  # noqa: E402

# The 40 classes of the README's Tiny-ImageNet tables, in the order of their wnids.txt (the splits hold out every
# 2nd or 4th of them in this order).
TIN40 = ('n04560804 n04254777 n01950731 n03393912 n03937543 n02279972 n02268443 n03649909 n02403003 n03854065 '
         'n04311004 n03970156 n02099601 n07583066 n02814533 n07711569 n02113799 n04371430 n02321529 n07749582 '
         'n03804744 n07734744 n03980874 n02988304 n02124075 n02788148 n02226429 n04146614 n04074963 n03255030 '
         'n02808440 n02058221 n03444034 n07871810 n03042490 n09428293 n03447447 n01768244 n03544143 n04501370').split()


def subset(source, out, wnids):
    """Write the classes wnids of a tiny-imagenet-200 source into the zip `out`, in the same layout."""
    src = jepa.FileSource(source)
    wnids_path = next((n for n in src.names if n.endswith('wnids.txt')), None)
    if wnids_path is None:
        raise jepa.UserError(f"{source} has no wnids.txt: is it the tiny-imagenet-200 download?")
    base = wnids_path[:-len('wnids.txt')]
    have = set(src.read(wnids_path).decode().split())
    missing = [w for w in wnids if w not in have]
    if missing:
        raise jepa.UserError(f"{source} lacks {len(missing)} of the classes (e.g. {missing[0]}): is it the full "
                             "tiny-imagenet-200?")
    keep = set(wnids)
    ann = [line for line in src.read(base + 'val/val_annotations.txt').decode().splitlines()
           if line.strip() and line.split('\t')[1] in keep]
    val_files = {base + 'val/images/' + line.split('\t')[0] for line in ann}
    train_files = [n for n in src.names if n.startswith(base + 'train/') and n[len(base):].split('/')[1] in keep]
    words = src.read(base + 'words.txt').decode().splitlines() if base + 'words.txt' in src.names else []
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    tmp = out + '.tmp'
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_STORED) as z:  # JPEGs do not compress
        z.writestr('tiny-imagenet-200/wnids.txt', '\n'.join(wnids) + '\n')
        z.writestr('tiny-imagenet-200/words.txt', '\n'.join(w for w in words if w.split('\t')[0] in keep) + '\n')
        z.writestr('tiny-imagenet-200/val/val_annotations.txt', '\n'.join(ann) + '\n')
        files = sorted(train_files) + sorted(val_files)
        for i, name in enumerate(files):
            z.writestr('tiny-imagenet-200/' + name[len(base):], src.read(name))
            if (i + 1) % 5000 == 0 or i + 1 == len(files):
                print(f"\r{out}: {i + 1}/{len(files)} images", end='', flush=True)
    print()
    os.replace(tmp, out)  # a killed run leaves no half-written archive under the final name


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('source', help='tiny-imagenet-200, the .zip or its folder')
    ap.add_argument('out', help='the .zip to write')
    ap.add_argument('--classes', type=int, default=0, help='a random subset of this many classes instead of the 40')
    ap.add_argument('--seed', type=int, default=0, help='seed of the random subset (with --classes)')
    ap.add_argument('--splits', action='store_true', help='also write the 20/20 and 30/10 class-disjoint splits')
    a = ap.parse_args(argv)
    if a.classes:
        wnids = jepa.FileSource(a.source)
        names = next((n for n in wnids.names if n.endswith('wnids.txt')), None)
        if names is None:
            raise jepa.UserError(f"{a.source} has no wnids.txt: is it the tiny-imagenet-200 download?")
        pool = wnids.read(names).decode().split()
        if not 0 < a.classes <= len(pool):
            raise jepa.UserError(f"--classes={a.classes}: choose 1 to {len(pool)}")
        chosen = random.Random(a.seed).sample(pool, a.classes)
    else:
        chosen = TIN40
    subset(a.source, a.out, chosen)
    if a.splits:
        prefix = os.path.join(os.path.dirname(a.out), 'tin40' if not a.classes else f'tin{a.classes}')
        for every in (2, 4):
            split_classes.main([a.out, prefix, f'--every={every}'])


if __name__ == '__main__':
    sys.exit(jepa.cli(main, sys.argv[1:]))
