"""medpeft: parameter-efficient fine-tuning of vision transformers on medical images."""
