"""The reference `segment-anything` 1.0 package, built at our configs.

Imports the reference lazily: only where it is installed (see README, "Parity with the
reference").
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from sam_core import SamConfig


def build_reference(config: SamConfig):
    """The reference model with the dimensions of `config` (random init)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = config.embedding_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=config.encoder_mlp_ratio,
            out_chans=config.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_abs_pos=True,
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=config.encoder_global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
                attention_downsample_rate=config.decoder_attention_downsample_rate,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
    ).eval()


def run_reference(model, image: np.ndarray, cases: list[dict]) -> tuple[torch.Tensor, list[dict]]:
    from segment_anything import SamPredictor as RefPredictor

    predictor = RefPredictor(model)
    predictor.set_image(image)
    results, by_name = [], {}
    for case in cases:

        def tensor(x):
            return None if x is None else torch.as_tensor(x, dtype=torch.float)

        coords = labels = boxes = masks = None
        if "point_coords" in case:
            coords = tensor(predictor.transform.apply_coords(case["point_coords"], image.shape[:2]))
            labels = torch.as_tensor(case["point_labels"], dtype=torch.int)
        if "boxes" in case:
            boxes = tensor(predictor.transform.apply_boxes(case["boxes"], image.shape[:2]))
        if "mask_inputs" in case:
            masks = by_name[case["mask_inputs"].split(":")[1]]["low_res"][:2, :1]
        with torch.no_grad():
            out, iou, low = predictor.predict_torch(
                coords, labels, boxes, masks, case["multimask"], return_logits=True
            )
        result = dict(case, masks=out, iou=iou, low_res=low)
        if masks is not None:
            result["mask_inputs"] = masks
        results.append(result)
        by_name[case["name"]] = result
    return predictor.features[0].clone(), results


def reference_generator(checkpoint: str, **params):
    """The reference SamAutomaticMaskGenerator (coco_rle output) on `checkpoint`."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from sam_core import build_sam

    config = build_sam(checkpoint=checkpoint).config
    model = build_reference(config)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params)


def reference_records(checkpoint: str, image: np.ndarray, **params) -> list[dict]:
    """Run the reference generator on one image."""
    import torch

    with torch.no_grad():
        return reference_generator(checkpoint, **params).generate(image)
