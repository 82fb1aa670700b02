"""From judgments to a fine-tuning set, pure: filters, selection, augmentation, IFD arithmetic, SFT records."""
