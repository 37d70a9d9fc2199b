"""PPT: pre-trained prompts on self-supervised multiple-choice data (docs/unimc_and_ppt.md, "PPT")."""
