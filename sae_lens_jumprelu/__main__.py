from sae_lens_jumprelu.commands.cli import main

raise SystemExit(main())
