"""resnet-exp: how does the depth of a ResNet (blocks per stage, frozen stages) change how fast
and how well it learns? See README.md; `resnet-exp --help` lists the commands."""
