"""Experiment helper (a script, not a test): split a tiny-imagenet-layout archive into two folder datasets by class,
so an encoder can be pre-trained on some classes and probed on classes it never saw (class-disjoint transfer).

    python tests/split_classes.py data/tiny-imagenet-40.zip data/tin40 --every=4
    # -> data/tin40_pre30 (train/, val/ of 30 classes) and data/tin40_held10 (the 10 classes wnids[::4])
    python jepa.py --data=folder --data_dir=data/tin40_pre30 --img_size=64 --patch_size=8 --budget_minutes=10
    python probe.py --ckpt=runs/folder_ijepa --data=folder --data_dir=data/tin40_held10
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jepa  # noqa: E402


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('archive', help='tiny-imagenet layout, folder or .zip (wnids.txt, train/, val/val_annotations.txt)')
    ap.add_argument('prefix', help='output prefix: PREFIX_pre<n> and PREFIX_held<m> are written')
    ap.add_argument('--every', type=int, default=4, help='hold out every k-th class of wnids.txt (default 4)')
    a = ap.parse_args(argv)
    src = jepa.FileSource(a.archive)
    wnids_path = next((n for n in src.names if n.endswith('wnids.txt')), None)
    if wnids_path is None:
        raise jepa.UserError(f"{a.archive} has no wnids.txt: is it the tiny-imagenet layout?")
    base = wnids_path[:-len('wnids.txt')]
    wnids = src.read(wnids_path).decode().split()
    held = set(wnids[::a.every])
    val_class = dict(line.split('\t')[:2] for line in src.read(base + 'val/val_annotations.txt').decode().splitlines()
                     if line.strip())
    roots = {False: f"{a.prefix}_pre{len(wnids) - len(held)}", True: f"{a.prefix}_held{len(held)}"}
    written = 0
    for n in src.names:
        rel = n[len(base):]
        if rel.startswith('train/') and rel.lower().endswith(jepa.IMAGE_EXTS):
            split, wnid = 'train', rel.split('/')[1]
        elif rel.startswith('val/images/'):
            split, wnid = 'val', val_class[rel.split('/')[-1]]
        else:
            continue
        folder = os.path.join(roots[wnid in held], split, wnid)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, os.path.basename(n)), 'wb') as f:
            f.write(src.read(n))
        written += 1
    print(f"{written} images: {roots[False]} ({len(wnids) - len(held)} classes), {roots[True]} ({len(held)} classes)")


if __name__ == '__main__':
    sys.exit(jepa.cli(main, sys.argv[1:]))
