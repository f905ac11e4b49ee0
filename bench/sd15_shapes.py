"""Print (as shapes.json-style JSON) every distinct attention shape of an SD1.5 UNet at 512 px: the self- and
cross-attention of each transformer block level (64x64, 32x32, 16x16 latents and the 8x8 middle)."""
import json

shapes = []
for level, (tokens, dim_head) in enumerate(((4096, 40), (1024, 80), (256, 160), (64, 160))):
    name = "mid" if level == 3 else f"in{level + 1}"
    shapes.append({"name": f"sd15-512 {name} self", "H": 8, "D": dim_head, "Sq": tokens, "Sk": tokens})
    shapes.append({"name": f"sd15-512 {name} cross", "H": 8, "D": dim_head, "Sq": tokens, "Sk": 77})
print(json.dumps({"about": "SD1.5 512 px UNet attention shapes", "shapes": shapes}, indent=1))
