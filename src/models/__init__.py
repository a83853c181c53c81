"""Model construction: timm backbones with a new head, and the LightningModule that trains them."""
