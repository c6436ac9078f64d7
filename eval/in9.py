"""ImageNet-9 (Backgrounds Challenge, Xiao et al. 2020) facts: layout, class names, 1000-to-9 mapping.

Kept as data in one place so the layout check, the 9-way zero-shot and the mapped 1000-way score all
agree on the same class order (the folder order ``00_dog`` ... ``08_fish``).
"""

#: Test variants of the released data, each stored as ``<variant>/val/<class folder>/``.
#: (The release also has ``fg_mask``, used only by the adversarial challenge, which this tool does not run.)
VARIANTS = ("original", "mixed_same", "mixed_rand", "mixed_next", "only_fg", "no_fg", "only_bg_b", "only_bg_t")

#: Class folders of every variant, in label order (the number prefix sorts them; two names contain spaces).
CLASS_FOLDERS = (
    "00_dog",
    "01_bird",
    "02_wheeled vehicle",
    "03_reptile",
    "04_carnivore",
    "05_insect",
    "06_musical instrument",
    "07_primate",
    "08_fish",
)

#: The class names used for 9-way zero-shot prompts: the folder names without the number prefix.
CLASSNAMES = tuple(folder.split("_", 1)[1] for folder in CLASS_FOLDERS)

#: ImageNet-1k class indices (0-999, the standard sorted-wnid order) that belong to each IN-9 class,
#: as inclusive (first, last) ranges, in IN-9 label order. Indices in no range have no IN-9 class, so a
#: 1000-way prediction there counts as wrong (as in the official evaluation).
#: Source: MadryLab/backgrounds_challenge, ``in_to_in9.json`` (commit 46d224b), which covers the WordNet
#: subtrees listed in its ``in9_classes.txt`` and in the paper's appendix: dog n02084071 (116 classes),
#: bird n01503061 (52), wheeled vehicle n04576211 (42), reptile n01661091 (36), carnivore n02075296 (35),
#: insect n02159955 (27), musical instrument n03800933 (26), primate n02469914 (20), fish n02512053 (16).
IN1K_RANGES = (
    ((151, 170), (173, 268)),  # 0 dog
    ((7, 24), (87, 100), (127, 146)),  # 1 bird
    (  # 2 wheeled vehicle
        (407, 408), (428, 428), (436, 436), (444, 444), (468, 468), (511, 511), (547, 547), (555, 555),
        (561, 561), (565, 565), (569, 569), (573, 573), (586, 586), (603, 603), (609, 609), (612, 612),
        (627, 627), (656, 656), (661, 661), (665, 665), (670, 671), (675, 675), (690, 690), (705, 705),
        (717, 717), (734, 734), (751, 751), (757, 757), (791, 791), (802, 803), (817, 817), (820, 820),
        (829, 829), (847, 847), (864, 864), (866, 867), (870, 870), (880, 880),
    ),
    ((33, 68),),  # 3 reptile
    ((269, 280), (286, 299), (356, 362), (387, 388)),  # 4 carnivore
    ((300, 326),),  # 5 insect
    (  # 6 musical instrument
        (401, 402), (420, 420), (432, 432), (486, 486), (494, 494), (513, 513), (541, 541), (546, 546),
        (558, 558), (566, 566), (577, 577), (579, 579), (593, 594), (641, 642), (683, 684), (687, 687),
        (699, 699), (776, 776), (822, 822), (875, 875), (881, 881), (889, 889),
    ),
    ((365, 384),),  # 7 primate
    ((0, 6), (389, 397)),  # 8 fish
)

#: Label used for ImageNet classes outside every IN-9 class.
UNMAPPED = -1


def in1k_to_in9():
    """The mapping as a list of 1000 IN-9 labels (``UNMAPPED`` for classes outside IN-9)."""
    table = [UNMAPPED] * 1000
    for label, ranges in enumerate(IN1K_RANGES):
        for first, last in ranges:
            for index in range(first, last + 1):
                if table[index] != UNMAPPED:
                    raise AssertionError(f"ImageNet class {index} is in two IN-9 classes")
                table[index] = label
    return table
