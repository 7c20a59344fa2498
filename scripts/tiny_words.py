"""The word list of evalctl's tiny generated models (scripts/gen-tiny-gguf.py and
scripts/gen-tiny-hf-llama.py): common English words, a superset of the load generator's
random-prompt words, so that each is one token in both models' vocabularies and random
prompts come out at one token per word.

Changing it changes both models' vocabularies, and so their stamps: both are regenerated.
"""

WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which
but have an had they you were their one all we can her has there been if more when will
would who so no she other its may these what them than some him time into only do my new
about out also two any up first could our then most see me should after said your very
between many over like those did now even well where must people through how same work
being because man life before each much under years way great state both use upon own used
however us part good world make three while long day without just men general during
another little found here system does de down number case might still made power water
place end
a i am be go get got know think take come want look give find tell ask seem feel try leave
call keep let begin help show hear play run move live believe bring happen write provide sit
stand lose pay meet include continue set learn change lead understand watch follow stop
create speak read allow add spend grow open walk win offer remember love consider appear buy
wait serve die send expect build stay fall cut reach kill remain suggest raise pass sell
require report decide pull year thing child place week company problem hand eye fact group
question night point home room mother area money story month lot right study book job word
business issue side kind head house service friend father hour game line member car city
community name president team minute idea kid body information back parent face others level
office door health person art war history party result morning reason research girl guy food
moment air teacher force education
""".split()
