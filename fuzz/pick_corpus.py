"""Chooses the saved corpus of one fuzz target from a libFuzzer merge.

    python3 fuzz/pick_corpus.py CONTROL_FILE CORPUS_DIR BUDGET

CONTROL_FILE is what `-merge=1 -merge_control_file=CONTROL_FILE SEEDS
INPUTS...` left behind: every input with the coverage (PC indices) it
reached. The hand-written seeds (the first directory) are kept as they are;
of the other inputs, at most BUDGET are chosen, greedily, each the one that
reaches the most edges nothing chosen before reaches (the smaller on a
tie), until nothing new is reached. They are written to CORPUS_DIR under
the SHA-1 of their content, replacing the fuzzer inputs saved there before;
files with other names (the seeds) are left alone. Inputs that crashed the
merge (an open bug) have no coverage and are never chosen. Prints how much
of the coverage the choice keeps.
"""
import hashlib
import os
import re
import sys

HEX_NAME = re.compile(r"^[0-9a-f]{40}$")


def read_control(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    count, first = int(lines[0]), int(lines[1])
    files = lines[2:2 + count]
    cov = {}
    for line in lines[2 + count:]:
        if line.startswith("COV "):
            parts = line.split()
            cov[int(parts[1])] = {int(p) for p in parts[2:]}
    return files, first, cov


def main():
    control, corpus, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
    files, first, cov = read_control(control)
    covered = set()
    for i in range(first):
        covered |= cov.get(i, set())
    seeds_cover = len(covered)
    everything = set(covered)
    for pcs in cov.values():
        everything |= pcs
    candidates = {i: cov[i] - covered for i in range(first, len(files)) if i in cov}
    sizes = {i: os.path.getsize(files[i]) for i in candidates}
    chosen = []
    while len(chosen) < budget and candidates:
        best = max(candidates, key=lambda i: (len(candidates[i]), -sizes[i]))
        gain = candidates.pop(best)
        if not gain:
            break
        chosen.append(best)
        covered |= gain
        for i in candidates:
            candidates[i] -= gain
    contents = {}
    for i in chosen:
        with open(files[i], "rb") as f:
            data = f.read()
        contents[hashlib.sha1(data).hexdigest()] = data
    for name in os.listdir(corpus):
        if HEX_NAME.match(name):
            os.remove(os.path.join(corpus, name))
    for name, data in contents.items():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(data)
    print(
        "    kept %d inputs beside %d seeds: %d of %d edges reached (seeds alone: %d)"
        % (len(contents), first, len(covered), len(everything), seeds_cover)
    )


if __name__ == "__main__":
    main()
